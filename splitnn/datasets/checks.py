"""Whether a dataset fits a model: per-sample shape and label range, said in one line."""

from __future__ import annotations

from collections.abc import Sequence

from splitnn.data import ArrayDataset, DatasetError


def fit_problem(dataset: ArrayDataset, input_shape: Sequence[int], num_classes: int) -> str | None:
    """Why ``dataset`` cannot train or test a model of ``input_shape`` and ``num_classes``
    (one clause, no source), or None if it can.

    The data may hold fewer classes than the model (a device that saw only some), never more.
    """
    wanted = tuple(input_shape)
    if len(dataset) == 0:
        return "no samples"
    if dataset.input_shape != wanted:
        hint = ""
        if len(wanted) == 3 and len(dataset.input_shape) == 3:
            hint = " (a folder of images is resized to the model's input shape when given it)"
        return f"samples are {dataset.input_shape}, the model takes {wanted}{hint}"
    if dataset.num_classes > num_classes:
        names = f" ({', '.join(dataset.label_names)})" if dataset.label_names else ""
        return f"the data has {dataset.num_classes} classes{names}, the model {num_classes}"
    low, high = int(dataset.y.min()), int(dataset.y.max())
    if low < 0 or high >= num_classes:
        return f"labels run from {low} to {high}, the model's classes are 0..{num_classes - 1}"
    return None


def check_against(
    dataset: ArrayDataset, input_shape: Sequence[int], num_classes: int, source: str
) -> None:
    """A DatasetError ``"{source}: {problem}"`` if ``dataset`` does not fit the model."""
    problem = fit_problem(dataset, input_shape, num_classes)
    if problem is not None:
        raise DatasetError(f"{source}: {problem}")
