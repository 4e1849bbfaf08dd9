"""A CSV of samples: a header row, then one sample a row, one of its columns the label.

The label column is ``label_column``, else the one named ``label``, else the last. Every other
column is a feature, and a row's features (in column order) are a 1-channel series: x is
N x 1 x F, what a 1-D CNN reads (store multi-channel windows, C x T, as a ``.npz``). Features
are numbers, used as stored (float32); an empty, non-numeric, NaN or infinite one is an error
naming its line and column. Labels are integer class indices >= 0, or class names (then the
classes are the sorted distinct names, or ``classes`` in its order). Comma-separated, UTF-8
(a byte-order mark is fine).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from splitnn.data import ArrayDataset, DatasetError
from splitnn.datasets.local import LocalData

DEFAULT_LABEL_COLUMN = "label"
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # beyond it a feature would be inf


def load_csv(path: Path, *, label_column: str | None, classes: tuple[str, ...] | None) -> LocalData:
    header, rows, lines = _read(path)
    label_at = _label_index(path, header, label_column)
    features = [i for i in range(len(header)) if i != label_at]
    if not features:
        raise DatasetError(f"{path}: no feature columns besides the label {header[label_at]!r}")
    values = np.empty((len(rows), len(features)), dtype=np.float32)
    for r, (row, line) in enumerate(zip(rows, lines, strict=True)):
        for f, column in enumerate(features):
            values[r, f] = _number(path, line, header[column], row[column])
    label_texts = [row[label_at].strip() for row in rows]
    labels, names = _labels(path, header[label_at], label_texts, lines, classes)
    num_classes = len(names) if names is not None else int(labels.max()) + 1
    dataset = ArrayDataset(values[:, None, :], labels, num_classes, str(path), names)
    return LocalData(dataset, path, "csv")


def _read(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the non-blank rows, and each row's line number."""
    rows, lines = [], []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # a blank line
                if len(row) != len(header or ()):
                    raise DatasetError(
                        f"{path}: line {reader.line_num} has {len(row)} fields, the header "
                        f"{len(header or ())}"
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: not a readable UTF-8 CSV ({exc})") from None
    if header is None or not rows:
        raise DatasetError(f"{path}: no samples; expected a header row, then one row a sample")
    return [name.strip() for name in header], rows, lines


def _label_index(path: Path, header: list[str], label_column: str | None) -> int:
    if label_column is not None:
        if label_column not in header:
            raise DatasetError(f"{path}: no column {label_column!r} in the header {header}")
        return header.index(label_column)
    if DEFAULT_LABEL_COLUMN in header:
        return header.index(DEFAULT_LABEL_COLUMN)
    return len(header) - 1


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(
            f"{path}: line {line}, column {column!r}: {text.strip()!r} is not a number"
        ) from None
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise DatasetError(
            f"{path}: line {line}, column {column!r}: {text.strip()!r} is not finite"
        )
    return value


def _labels(
    path: Path,
    column: str,
    texts: list[str],
    lines: list[int],
    classes: tuple[str, ...] | None,
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Integer labels, or names mapped to indices (with the names)."""
    numbers: list[float | None] = []
    for text, line in zip(texts, lines, strict=True):
        if not text:
            raise DatasetError(f"{path}: line {line}: no label in column {column!r}")
        try:
            numbers.append(float(text))
        except ValueError:
            numbers.append(None)
    if all(n is not None for n in numbers) and classes is None:
        for n, text, line in zip(numbers, texts, lines, strict=True):
            if n is not None and not (math.isfinite(n) and n.is_integer() and n >= 0):
                raise DatasetError(
                    f"{path}: line {line}: label {text!r} is not a class index (0, 1, ...) "
                    "or a class name"
                )
        return np.asarray(numbers, dtype=np.int64), None
    mixed = next((i for i, n in enumerate(numbers) if n is not None), None)
    if mixed is not None and classes is None:
        raise DatasetError(
            f"{path}: the label column {column!r} mixes class names and numbers "
            f"(line {lines[mixed]}: {texts[mixed]!r})"
        )
    names = classes if classes is not None else tuple(sorted(set(texts)))
    index = {name: i for i, name in enumerate(names)}
    for text, line in zip(texts, lines, strict=True):
        if text not in index:
            raise DatasetError(
                f"{path}: line {line}: label {text!r} is not one of the classes {list(names)}"
            )
    return np.asarray([index[t] for t in texts], dtype=np.int64), names
