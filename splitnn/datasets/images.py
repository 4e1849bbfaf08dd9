"""A folder of images, one sub-folder per class, decoded with Pillow in a thread pool.

Each image is decoded (JPEGs at a reduced scale when much larger than needed), turned upright by
its EXIF orientation, converted to RGB (C = 3) or grayscale (C = 1, Pillow's "L") as the model's
input asks, resized to H x W (stretched, no crop: bilinear, antialiased when shrinking), scaled
to [0, 1] and normalised per channel, ``(pixel - mean) / std`` (by default 0.5 and 0.5: values
in [-1, 1]). The normalisation is fixed, not measured on the data, so the edge and every device
feed the model alike whatever images each holds.

Files with another extension and hidden files (``.*``) are not images and are passed over; an
image that does not decode (truncated, corrupt, too large) is skipped and counted, with one
warning line. Pillow releases the GIL while it decodes, so threads decode in parallel.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from splitnn.data import ArrayDataset, DatasetError, Split
from splitnn.datasets._pixels import pixels_to_inputs
from splitnn.datasets.local import DEFAULT_MEAN, DEFAULT_STD, LocalData

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
NAMED_SKIPS = 5  # how many skipped files a result and the warning name
_MODES = {1: "L", 3: "RGB"}
_MAX_WORKERS = 8


def load_image_folder(
    root: Path,
    split: Split | None,
    *,
    input_shape: tuple[int, ...],
    classes: tuple[str, ...] | None,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    workers: int | None,
) -> LocalData:
    """The images under ``root``'s class sub-folders as (N, C, H, W) (see the module's docs)."""
    if len(input_shape) != 3 or input_shape[0] not in _MODES or min(input_shape) < 1:
        raise DatasetError(
            f"{root}: images become (C, H, W) with C 1 (grayscale) or 3 (RGB), but the "
            f"requested input shape is {input_shape}"
        )
    folder = _split_folder(root, split)
    names, files, labels = _find_images(folder, classes)
    channels, height, width = input_shape
    decoded = _decode_all(files, _MODES[channels], (width, height), workers)
    good = [i for i, image in enumerate(decoded) if isinstance(image, np.ndarray)]
    bad = [i for i, image in enumerate(decoded) if not isinstance(image, np.ndarray)]
    if not good:
        raise DatasetError(
            f"{folder}: none of its {len(files)} images decodes (first, "
            f"{files[0].relative_to(folder)}: {decoded[0]})"
        )
    skipped_names = tuple(str(files[i].relative_to(folder)) for i in bad[:NAMED_SKIPS])
    if bad:
        more = ", ..." if len(bad) > NAMED_SKIPS else ""
        log.warning(
            "%s: skipped %d of %d images that do not decode (%s%s; first: %s)",
            folder, len(bad), len(files), ", ".join(skipped_names), more, decoded[bad[0]],
        )  # fmt: skip
    pixels = np.stack([decoded[i] for i in good])  # (N, H, W) or (N, H, W, C), uint8
    pixels = pixels.reshape(len(good), height, width, channels).transpose(0, 3, 1, 2)
    x = pixels_to_inputs(np.ascontiguousarray(pixels), mean, std, folder)
    y = np.asarray([labels[i] for i in good], dtype=np.int64)
    dataset = ArrayDataset(x, y, len(names), str(folder), label_names=names)
    return LocalData(dataset, folder, "images", len(bad), skipped_names)


def decode_image(
    path: Path,
    input_shape: tuple[int, ...],
    *,
    mean: float | Sequence[float] = DEFAULT_MEAN,
    std: float | Sequence[float] = DEFAULT_STD,
) -> NDArray[np.float32]:
    """One image file as one (C, H, W) sample, decoded and normalised exactly as
    :func:`load_image_folder` does; a DatasetError when it does not decode."""
    if len(input_shape) != 3 or input_shape[0] not in _MODES or min(input_shape) < 1:
        raise DatasetError(f"{path}: images become (C, H, W) with C 1 or 3, not {input_shape}")
    channels, height, width = input_shape
    image = _decode(path, _MODES[channels], (width, height))
    if not isinstance(image, np.ndarray):
        raise DatasetError(f"{path}: does not decode ({image})")
    pixels = image.reshape(1, height, width, channels).transpose(0, 3, 1, 2)
    sample: NDArray[np.float32] = pixels_to_inputs(np.ascontiguousarray(pixels), mean, std, path)[0]
    return sample


def _split_folder(root: Path, split: Split | None) -> Path:
    """``root``, or its ``train``/``test`` sub-folder when it has exactly those two."""
    subfolders = {p.name for p in _visible(root) if p.is_dir()}
    if subfolders != {"train", "test"}:
        return root
    if split is None:
        raise DatasetError(f"{root}: holds train/ and test/; say which split to read")
    return root / split


def _find_images(
    folder: Path, classes: tuple[str, ...] | None
) -> tuple[tuple[str, ...], list[Path], list[int]]:
    """The class names, and every image file with its label, in a fixed order."""
    subfolders = sorted(p.name for p in _visible(folder) if p.is_dir())
    if not subfolders:
        raise DatasetError(
            f"{folder}: no class sub-folders; expected one sub-folder of PNG/JPEG images per class"
        )
    names = classes if classes is not None else tuple(subfolders)
    if len(set(names)) != len(names) or not names:
        raise DatasetError(f"{folder}: the class names must be distinct, got {list(names)}")
    unknown = [name for name in subfolders if name not in names]
    if unknown:
        raise DatasetError(
            f"{folder}: sub-folder {unknown[0]!r} is not one of the classes {list(names)}"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        if name not in subfolders:
            continue  # a class this device has no images of
        found = sorted(p for p in _images_below(folder / name))
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetError(f"{folder}: no PNG or JPEG images in its class sub-folders")
    return names, files, labels


def _visible(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot list it ({exc.strerror or exc})") from None


def _images_below(folder: Path) -> list[Path]:
    """Image files at any depth below ``folder``, hidden files and folders left out."""
    found = []
    for directory, subdirectories, names in os.walk(folder):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        found += [
            Path(directory, name)
            for name in names
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        ]
    return found


def _decode_all(
    files: list[Path], mode: str, size: tuple[int, int], workers: int | None
) -> list[NDArray[np.uint8] | str]:
    threads = workers or min(_MAX_WORKERS, os.cpu_count() or 1)
    if threads < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        return list(pool.map(lambda path: _decode(path, mode, size), files))


def _decode(path: Path, mode: str, size: tuple[int, int]) -> NDArray[np.uint8] | str:
    """The image as uint8 (H, W) or (H, W, 3), or why it does not decode."""
    try:
        with Image.open(path) as image:
            image.draft(mode, size)  # JPEG: decode at the smallest scale still >= size
            upright = ImageOps.exif_transpose(image).convert(mode)
            if upright.size != size:
                upright = upright.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(upright, dtype=np.uint8)
    # A corrupt file may fail in any way inside a decoder (OSError, SyntaxError, struct.error,
    # DecompressionBombError, ...): each is a skipped image, never a crash.
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
