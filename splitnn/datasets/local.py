"""A device's own data, or the edge's held-out set, read from a local path.

Three layouts, told apart by the path:

- **a folder of images**: one sub-folder per class (PNG or JPEG, any case of extension, at any
  depth below it), classes the sorted sub-folder names unless ``classes`` gives them. A folder
  whose sub-folders are exactly ``train`` and ``test`` holds one such tree per split. See
  :mod:`splitnn.datasets.images` for the decoding, resizing and normalisation.
- **a .npz** with arrays ``x`` (N x C x ...: N x C x T series windows, N x C x H x W images) and
  ``y`` (integer labels), optionally ``labels`` (the class names), or ``x_train``/``y_train``
  and ``x_test``/``y_test`` for both splits. See :mod:`splitnn.datasets.arrays`.
- **a .csv** with a header row and a label column: each row a sample, its features a
  1-channel series (N x 1 x F). See :mod:`splitnn.datasets.tables`.

Otherwise the path is taken whole as the split asked for. Every problem is a DatasetError of one
line that names the file; an image that does not decode is skipped and counted instead.
Decoding images takes a while: from async code call this through ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from splitnn.data import ArrayDataset, DatasetError, Split

LocalKind = Literal["images", "npz", "csv"]
DEFAULT_IMAGE_SHAPE = (3, 32, 32)
DEFAULT_MEAN = 0.5  # images: (pixel / 255 - mean) / std per channel, so values in [-1, 1]
DEFAULT_STD = 0.5


@dataclass(frozen=True)
class LocalData:
    """What was read from ``path``, and what was skipped (images that do not decode)."""

    dataset: ArrayDataset
    path: Path
    kind: LocalKind
    skipped: int = 0
    skipped_names: tuple[str, ...] = ()  # the first few skipped files, relative to ``path``

    def summary(self) -> str:
        """One line: the samples, their shape, the classes and what was skipped."""
        data = self.dataset
        names = f" ({', '.join(data.label_names)})" if data.label_names else ""
        line = (
            f"{self.path}: {len(data)} samples of shape {data.input_shape}, "
            f"{data.num_classes} classes{names}"
        )
        if self.skipped:
            shown = ", ".join(self.skipped_names)
            more = ", ..." if self.skipped > len(self.skipped_names) else ""
            line += f"; skipped {self.skipped} that do not decode ({shown}{more})"
        return line


def load_local(
    path: str | Path,
    split: Split | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
    label_column: str | None = None,
    mean: float | Sequence[float] = DEFAULT_MEAN,
    std: float | Sequence[float] = DEFAULT_STD,
    workers: int | None = None,
) -> LocalData:
    """Read the data at ``path`` (see the module's docs for the layouts).

    ``split`` picks the ``train``/``test`` half of a layout that has both (None: the path must
    hold one set). ``input_shape`` (C, H, W) is what images become: C 1 (grayscale) or 3 (RGB),
    resized to H x W; default 3 x 32 x 32. It does not reshape arrays or tables: check those
    with :func:`splitnn.datasets.check_against`. ``classes`` fixes the class names and their
    order (images, and a CSV's named labels), so devices that lack a class agree on the indices.
    ``label_column``: a CSV's label column (default ``label``, else the last). ``mean``/``std``:
    the normalisation of pixels scaled to [0, 1] (images, and uint8 arrays), one value or one
    per channel. ``workers``: image-decoding threads (default: up to 8, one per CPU).
    """
    path = Path(path).expanduser()
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
    if path.is_dir():
        from splitnn.datasets.images import load_image_folder  # Pillow, only for images

        return load_image_folder(
            path,
            split,
            input_shape=DEFAULT_IMAGE_SHAPE if input_shape is None else tuple(input_shape),
            classes=None if classes is None else tuple(classes),
            mean=mean,
            std=std,
            workers=workers,
        )
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        from splitnn.datasets.arrays import load_npz

        return load_npz(path, split, mean=mean, std=std)
    if suffix == ".csv":
        from splitnn.datasets.tables import load_csv

        return load_csv(
            path, label_column=label_column, classes=None if classes is None else tuple(classes)
        )
    raise DatasetError(
        f"{path}: not local data; expected a folder of class sub-folders of images, "
        "a .npz with arrays x and y, or a .csv with a label column"
    )
