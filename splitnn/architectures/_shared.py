"""What the built-in architectures share: the input check and the classifier head."""

from __future__ import annotations

from torch import nn

from splitnn.errors import SplitError
from splitnn.models import ModelSpec


def require_input(spec: ModelSpec, *, dims: tuple[str, ...], min_size: int) -> tuple[int, ...]:
    """The extents of ``spec.input_shape`` after its channel axis, checked against ``dims``.

    ``dims`` names the axes after the channels (``("height", "width")`` or ``("steps",)``), so
    the input's rank is ``1 + len(dims)``; each must be at least ``min_size``, the factor by
    which the model downsamples, below which the last stages would see nothing but padding.
    """
    shape = tuple(spec.input_shape)
    expected = ("channels", *dims)
    if len(shape) != len(expected):
        raise SplitError(
            f"{spec.name} takes inputs of shape ({', '.join(expected)}), "
            f"got {len(shape)} dimensions: {shape}"
        )
    sizes = shape[1:]
    small = [f"{dim} {size}" for dim, size in zip(dims, sizes, strict=True) if size < min_size]
    if small:
        each = " each" if len(dims) > 1 else ""
        raise SplitError(
            f"{spec.name} downsamples its input {min_size}-fold, so its {' and '.join(dims)} "
            f"must{each} be at least {min_size}; got {', '.join(small)}"
        )
    return sizes


def pooled_classifier(channels: int, num_classes: int, *, dims: int) -> nn.Sequential:
    """The head block: global average pool over the ``dims`` spatial (or time) axes, flatten,
    linear."""
    pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
    return nn.Sequential(pool, nn.Flatten(), nn.Linear(channels, num_classes))
