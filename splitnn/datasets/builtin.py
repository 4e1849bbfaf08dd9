"""The built-in datasets: scikit-learn's digits, CIFAR-10 from a local directory, synthetic.

Nothing here downloads: digits ship with scikit-learn, CIFAR-10 is read from a local directory
and the synthetic set is generated. They register themselves with :func:`register_builtins`,
the same ``register`` call a user's loader makes.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from splitnn.data import ArrayDataset, DatasetError, Split

if TYPE_CHECKING:
    from splitnn.datasets.registry import DatasetRegistry

_DIGITS_SPLIT_SEED = 20240601  # fixed, so every process (any --seed) sees the same split
_DIGITS_TEST_FRACTION = 0.2
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES: dict[Split, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32).reshape(1, 3, 1, 1)
_CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32).reshape(1, 3, 1, 1)


def register_builtins(registry: DatasetRegistry) -> None:
    registry.register("digits", load_digits, description="scikit-learn's 8x8 digits, 10 classes")
    registry.register(
        "cifar10", load_cifar10, description="CIFAR-10 (python version) from data_dir"
    )
    registry.register(
        "synthetic", make_synthetic, description="generated, CIFAR-shaped, 10 classes"
    )


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: 8x8 images (0..16) and their labels.

    Read straight from the CSV that scikit-learn ships: importing ``sklearn.datasets`` costs
    about 0.9 s, a third of a device's start-up (it counts when a restarted device rejoins).
    """
    spec = importlib.util.find_spec("sklearn")
    locations = spec.submodule_search_locations if spec is not None else None
    csv = Path(next(iter(locations))) / "datasets" / "data" / "digits.csv.gz" if locations else None
    if csv is None or not csv.is_file():  # another layout: ask scikit-learn itself
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return np.asarray(bunch.images), np.asarray(bunch.target)
    with gzip.open(csv, "rt") as text:
        table = np.loadtxt(text, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def load_digits(split: Split) -> ArrayDataset:
    images, target = digits_arrays()
    x = (np.asarray(images, dtype=np.float32) / 16.0)[:, None]
    y = np.asarray(target, dtype=np.int64)
    # Stratified split done here rather than by sklearn, so it cannot change between versions.
    rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
    is_test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        is_test[members[: round(len(members) * _DIGITS_TEST_FRACTION)]] = True
    keep = is_test if split == "test" else ~is_test
    return ArrayDataset(x[keep], y[keep], 10, "digits")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of numpy arrays) and nothing that could run code."""

    _ALLOWED = frozenset(
        {
            ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _cifar_error(problem: str) -> DatasetError:
    return DatasetError(
        f"cifar10: {problem}. Expected the CIFAR-10 python version: a directory "
        f"'{_CIFAR_DIR}' (pass it or its parent as data_dir) holding data_batch_1..5 and "
        "test_batch, each a pickle of {b'data': uint8 (N, 3072), b'labels': [int]}"
    )


def load_cifar10(split: Split, *, data_dir: Path | None) -> ArrayDataset:
    if data_dir is None:
        raise _cifar_error("no data_dir given")
    root = Path(data_dir)
    if (root / _CIFAR_DIR).is_dir():
        root = root / _CIFAR_DIR
    xs, ys = [], []
    for file_name in _CIFAR_FILES[split]:
        path = root / file_name
        if not path.is_file():
            raise _cifar_error(f"missing file {path}")
        try:
            with path.open("rb") as f:
                batch = _ArrayUnpickler(f, encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
            raise _cifar_error(f"unreadable batch {path}: {exc!r}") from exc
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
            raise _cifar_error(f"bad shapes {data.shape} / {labels.shape} in {path}")
        if labels.size and not 0 <= labels.min() <= labels.max() <= 9:
            raise _cifar_error(f"labels outside 0..9 in {path}")
        xs.append(data)
        ys.append(labels)
    x = np.concatenate(xs).reshape(-1, 3, 32, 32).astype(np.float32)
    x /= 255.0
    x -= _CIFAR_MEAN
    x /= _CIFAR_STD
    return ArrayDataset(x, np.concatenate(ys), 10, "cifar10")


def make_synthetic(split: Split, *, seed: int, synthetic_size: int) -> ArrayDataset:
    """CIFAR-shaped, 10 classes: a smooth random template per class, randomly shifted and
    scaled, under heavy pixel noise. Templates depend on ``seed`` only; each split has its own
    noise. Tuned so vgg5 reaches ~85% test accuracy after one epoch of 2000 samples, not 100%."""
    num_classes, channels, side, waves, noise = 10, 3, 32, 4, 3.0
    size = synthetic_size
    if size < 1:
        raise ValueError(f"synthetic_size must be >= 1, got {size}")
    rng = np.random.default_rng((seed, 0))
    # Each template channel is a sum of a few low-frequency plane waves: smooth, distinct.
    freq = rng.uniform(-3.0, 3.0, size=(num_classes, channels, waves, 2))
    phase = rng.uniform(0.0, 2 * np.pi, size=(num_classes, channels, waves))
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij")) / side
    angle = np.einsum("kcwd,dij->kcwij", freq, grid) * 2 * np.pi + phase[..., None, None]
    templates = np.sin(angle).sum(axis=2) / np.sqrt(waves / 2)  # ~unit variance per pixel

    rng = np.random.default_rng((seed, 1 if split == "train" else 2))
    y = rng.permutation(np.arange(size) % num_classes).astype(np.int64)
    shifts = rng.integers(-4, 5, size=(size, 2))
    scale = rng.uniform(0.5, 1.5, size=(size, 1, 1, 1))  # E[scale**2] = 13/12
    x = np.stack(
        [np.roll(templates[c], tuple(s), axis=(1, 2)) for c, s in zip(y, shifts, strict=True)]
    )
    x = (x * scale + rng.normal(0.0, noise, size=x.shape)) / np.sqrt(13 / 12 + noise**2)
    return ArrayDataset(x.astype(np.float32), y, num_classes, "synthetic")
