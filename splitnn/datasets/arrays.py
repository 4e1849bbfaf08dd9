"""A ``.npz`` of samples and labels: series windows (N x C x T), images (N x C x H x W), ...

Arrays ``x`` and ``y`` (or ``x_train``/``y_train`` and ``x_test``/``y_test``, one pair per
split), and optionally ``labels``, the class names (index i names class i). ``x`` is N samples
of C channels; a uint8 ``x`` is taken as pixels and scaled and normalised as images are
(``(x / 255 - mean) / std``), any other integer or float ``x`` is used as stored (as float32:
normalise it yourself). ``y`` holds integer class indices >= 0 (integral floats are accepted);
the classes are ``len(labels)``, else ``max(y) + 1``. Nothing here unpickles: object arrays are
refused.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from splitnn.data import ArrayDataset, DatasetError, Split
from splitnn.datasets._pixels import pixels_to_inputs
from splitnn.datasets.local import LocalData


def load_npz(
    path: Path,
    split: Split | None,
    *,
    mean: float | Sequence[float],
    std: float | Sequence[float],
) -> LocalData:
    try:
        with np.load(path, allow_pickle=False) as archive:
            x_key, y_key = _keys(path, set(archive.files), split)
            x, y = archive[x_key], archive[y_key]
            names = archive["labels"] if "labels" in archive.files else None
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # allow_pickle=False makes an object array a ValueError: refused, never unpickled.
        raise DatasetError(f"{path}: not a readable .npz of numeric arrays ({exc})") from None
    inputs = _inputs(path, x_key, x, mean, std)
    labels = _integer_labels(path, y_key, y, len(inputs))
    label_names = _label_names(path, names, labels)
    num_classes = len(label_names) if label_names is not None else int(labels.max()) + 1
    dataset = ArrayDataset(inputs, labels, num_classes, str(path), label_names)
    return LocalData(dataset, path, "npz")


def _keys(path: Path, keys: set[str], split: Split | None) -> tuple[str, str]:
    if {"x", "y"} <= keys:
        return "x", "y"
    if split is not None and {f"x_{split}", f"y_{split}"} <= keys:
        return f"x_{split}", f"y_{split}"
    wanted = "x and y" + ("" if split is None else f" (or x_{split} and y_{split})")
    raise DatasetError(f"{path}: needs arrays {wanted}, has {sorted(keys) or 'none'}")


def _inputs(
    path: Path,
    key: str,
    x: NDArray[Any],
    mean: float | Sequence[float],
    std: float | Sequence[float],
) -> NDArray[np.float32]:
    if x.ndim < 3:
        raise DatasetError(
            f"{path}: {key} must be N x C x ... (N x C x T series, N x C x H x W images), got "
            f"shape {x.shape}; for one channel add its axis (x[:, None])"
        )
    if x.dtype.kind not in "iuf":
        raise DatasetError(f"{path}: {key} must hold integers or floats, got dtype {x.dtype}")
    if len(x) == 0:
        raise DatasetError(f"{path}: {key} holds no samples")
    if x.dtype == np.uint8:
        return pixels_to_inputs(x, mean, std, path)
    with np.errstate(over="ignore"):  # too large for float32 becomes inf: reported below
        inputs = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(inputs.reshape(len(inputs), -1)).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise DatasetError(
            f"{path}: {key} has NaN or infinite values (as float32) in {int((~finite).sum())} "
            f"samples, the first at index {first}"
        )
    return inputs


def _integer_labels(path: Path, key: str, y: NDArray[Any], samples: int) -> NDArray[np.int64]:
    """``y`` as int64 class indices, checked: 1-D, one per sample, integral, >= 0."""
    if y.ndim != 1:
        raise DatasetError(f"{path}: {key} must be 1-D (one label per sample), got {y.shape}")
    if len(y) != samples:
        raise DatasetError(f"{path}: {samples} samples but {len(y)} labels in {key}")
    if y.dtype.kind not in "iuf":
        raise DatasetError(
            f"{path}: {key} must hold integer class indices, got dtype {y.dtype} (put class "
            "names in an array 'labels')"
        )
    if y.dtype.kind == "f":
        fractional = ~np.isfinite(y) | (y != np.round(y))
        if fractional.any():
            first = int(np.flatnonzero(fractional)[0])
            raise DatasetError(
                f"{path}: {key} holds labels that are not integers, e.g. {y[first]} at index "
                f"{first}"
            )
    if y.min() < 0:
        first = int(np.flatnonzero(y < 0)[0])
        raise DatasetError(
            f"{path}: {key} holds negative labels, e.g. {y[first]} at index {first}; classes "
            "are 0, 1, ..."
        )
    return y.astype(np.int64)


def _label_names(
    path: Path, names: NDArray[Any] | None, labels: NDArray[np.int64]
) -> tuple[str, ...] | None:
    if names is None:
        return None
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DatasetError(
            f"{path}: labels must be a 1-D array of class names, got {names.dtype} {names.shape}"
        )
    text = tuple(str(n) for n in names.astype(str))
    if int(labels.max()) >= len(text):
        raise DatasetError(
            f"{path}: the labels reach class {int(labels.max())}, but the array 'labels' names "
            f"only {len(text)} classes"
        )
    return text
