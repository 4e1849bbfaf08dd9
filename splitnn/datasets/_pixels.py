"""8-bit pixels to model inputs: scaled to [0, 1], then normalised per channel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from splitnn.data import DatasetError


def pixels_to_inputs(
    pixels: NDArray[np.uint8],
    mean: float | Sequence[float],
    std: float | Sequence[float],
    path: Path,
) -> NDArray[np.float32]:
    """(N, C, ...) uint8 to float32 ``(pixels / 255 - mean) / std``, per channel C."""
    channels = pixels.shape[1]
    shape = (1, channels) + (1,) * (pixels.ndim - 2)
    centre, scale = (
        _per_channel(mean, channels, "mean", path),
        _per_channel(std, channels, "std", path),
    )
    if not (scale > 0).all():
        raise DatasetError(f"{path}: the normalisation's std must be > 0, got {std}")
    x = pixels.astype(np.float32)
    x /= 255.0
    x -= centre.reshape(shape)
    x /= scale.reshape(shape)
    return x


def _per_channel(
    value: float | Sequence[float], channels: int, what: str, path: Path
) -> NDArray[np.float32]:
    values = np.atleast_1d(np.asarray(value, dtype=np.float32))
    if values.ndim != 1 or len(values) not in (1, channels) or not np.isfinite(values).all():
        raise DatasetError(
            f"{path}: the normalisation's {what} must be one number or one per channel "
            f"({channels}), got {value}"
        )
    return np.broadcast_to(values, (channels,)).astype(np.float32)
