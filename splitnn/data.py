"""The data as the training code holds it: labelled samples in memory, and resumable batches.

Where data comes from (the built-ins, a user's loaders, local files) and how an emulated run
splits it among devices is :mod:`splitnn.datasets`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from schemas.errors import AresError

Split = Literal["train", "test"]


class DatasetError(AresError, FileNotFoundError, ValueError):
    """A dataset that is missing, unknown, not in the expected format, or that does not fit the
    model. Both a FileNotFoundError (missing files) and a ValueError (bad content), so handlers
    of either keep working."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays elementwise has no single truth
class ArrayDataset:
    """Samples and labels held in memory.

    ``x`` is (N, C, ...): N samples of C channels, each channel an image (H, W), a series (T) or
    any other array; ``y`` the labels, 0 <= y < ``num_classes``. ``label_names``, when the source
    has them (class folders, a CSV's names), names each class index.
    """

    x: NDArray[np.float32]  # (N, C, ...), normalised
    y: NDArray[np.int64]  # (N,)
    num_classes: int
    name: str
    label_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim < 3 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise ValueError(f"need x (N, C, ...) and y (N,), got {self.x.shape}, {self.y.shape}")
        if self.x.dtype != np.float32 or self.y.dtype != np.int64:
            raise ValueError(f"need float32 x and int64 y, got {self.x.dtype}, {self.y.dtype}")
        if self.label_names is not None and len(self.label_names) != self.num_classes:
            raise ValueError(f"{len(self.label_names)} label names for {self.num_classes} classes")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample shape: (C, H, W) for images, (C, T) for series."""
        return tuple(self.x.shape[1:])

    def subset(self, indices: NDArray[np.integer[Any]]) -> ArrayDataset:
        """The samples at ``indices``, in that order (copies the data)."""
        return ArrayDataset(
            self.x[indices], self.y[indices], self.num_classes, self.name, self.label_names
        )


class BatchStream:
    """Mini-batch indices in an order that is a pure function of (seed, epoch, position).

    Each epoch is a fresh permutation from ``default_rng((seed, epoch))``; batches never span
    two epochs, so an epoch's last batch may be partial. The stream continues across training
    rounds, and ``state()``/``from_state`` let a restarted device pick up where it stopped.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int) -> None:
        if num_samples < 1 or batch_size < 1 or seed < 0:
            raise ValueError(
                f"need num_samples >= 1, batch_size >= 1, seed >= 0; "
                f"got {num_samples}, {batch_size}, {seed}"
            )
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self._epoch, self._position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> NDArray[np.int64]:
        return np.random.default_rng((self.seed, epoch)).permutation(self.num_samples)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        return self._position

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def next_batch(self) -> NDArray[np.int64]:
        """The next batch's sample indices (1..batch_size of them)."""
        batch = self._order[self._position : self._position + self.batch_size]
        self._position += len(batch)
        if self._position == self.num_samples:
            self._epoch, self._position = self._epoch + 1, 0
            self._order = self._permutation(self._epoch)
        return batch

    def state(self) -> dict[str, int]:
        """Where the stream stands, as a small JSON-able dict."""
        return {"epoch": self._epoch, "position": self._position}

    @classmethod
    def from_state(
        cls, num_samples: int, batch_size: int, seed: int, state: Mapping[str, object]
    ) -> BatchStream:
        """A stream that continues exactly where the one that produced ``state`` was."""
        epoch, position = state.get("epoch"), state.get("position")
        if type(epoch) is not int or type(position) is not int:
            raise ValueError(f"stream state needs int epoch and position, got {state!r}")
        if epoch < 0 or not 0 <= position < num_samples:
            raise ValueError(f"stream state out of range for {num_samples} samples: {state!r}")
        stream = cls(num_samples, batch_size, seed)
        stream._epoch, stream._position = epoch, position
        stream._order = stream._permutation(epoch)
        return stream
