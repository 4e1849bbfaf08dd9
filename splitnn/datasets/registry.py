"""Data sources by name or by path: the built-ins, a user's loaders, and local files.

``load_dataset(source, split)`` reads ``source`` by one rule, first match wins:

1. ``file:PATH``: local data at PATH, whatever PATH looks like.
2. A registered name (``digits``, ``cifar10``, ``synthetic``, or one a user registered).
3. ``package.module:callable``: that loader, imported here (the same code must be installed on
   the edge and on every device).
4. Anything that looks like a path: it has a ``/`` (or ``\\``), starts with ``.`` or ``~``,
   ends in ``.npz`` or ``.csv``, or exists: local data (:func:`splitnn.datasets.load_local`).
5. Anything else is an unknown dataset (a DatasetError listing the known ones).

So a name always wins over a same-named folder in the working directory: write ``./digits``
or ``file:digits`` for the folder.

A user's code adds a source without editing ours, the way the built-ins register::

    from splitnn.datasets import ArrayDataset, register_dataset

    def load_wards(split, *, data_dir, seed):
        ...
        return ArrayDataset(x, y, num_classes=4, name="wards")

    register_dataset("wards", load_wards)

or names the loader as ``mypkg.data:load_wards`` with no registration, or publishes it under the
``ares.datasets`` entry-point group (the entry point's name is the dataset's). A loader takes
the split (``"train"`` or ``"test"``) and, by keyword, whichever of ``data_dir``, ``seed``,
``synthetic_size`` and ``input_shape`` it declares (all of them if it takes ``**kwargs``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from splitnn.data import ArrayDataset, DatasetError, Split
from splitnn.imports import IMPORT_PATH, import_callable

Loader = Callable[..., ArrayDataset]
ENTRY_POINT_GROUP = "ares.datasets"
FILE_PREFIX = "file:"
LOCAL_SUFFIXES = (".npz", ".csv")

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class DatasetEntry:
    """A source the registry can load: ``loader(split, **declared keyword arguments)``."""

    name: str
    loader: Loader
    description: str = ""

    def load(self, split: Split, **offered: Any) -> ArrayDataset:
        try:
            declared = inspect.signature(self.loader).parameters
        except (TypeError, ValueError):  # some callables have no signature: offer nothing
            declared = {}  # type: ignore[assignment]
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in declared.values())
        kwargs = {k: v for k, v in offered.items() if takes_any or k in declared}
        data = self.loader(split, **kwargs)
        if not isinstance(data, ArrayDataset):
            raise DatasetError(
                f"dataset {self.name}: its loader must return an ArrayDataset, "
                f"got {type(data).__name__}"
            )
        return data


class DatasetRegistry:
    """Data sources by name; the built-ins are registered on first use."""

    def __init__(self) -> None:
        self._entries: dict[str, DatasetEntry] = {}
        self._loaded = False

    def register(self, name: str, loader: Loader, *, description: str = "") -> None:
        """Make ``name`` a dataset everywhere a dataset is named (CLI, settings, scenarios).

        Registering the same loader under the same name again is a no-op; another loader
        under a taken name is a DatasetError.
        """
        self._load()  # the built-ins first: their names are taken, and they list first
        if not _NAME.fullmatch(name):
            raise DatasetError(f"dataset name {name!r} must be a word (letters, digits, _ . -)")
        if not callable(loader):
            raise DatasetError(f"dataset {name!r}: the loader must be callable, got {loader!r}")
        known = self._entries.get(name)
        if known is not None and known.loader is not loader:
            raise DatasetError(
                f"dataset {name!r} is already registered (by {known.loader.__module__})"
            )
        self._entries[name] = DatasetEntry(name, loader, description)

    def names(self) -> tuple[str, ...]:
        """The registered datasets: built-ins first, then a user's, in registration order."""
        self._load()
        return tuple(self._entries)

    def entry(self, name: str) -> DatasetEntry | None:
        """The registered or ``package.module:callable`` source ``name``; None if neither."""
        self._load()
        if name in self._entries:
            return self._entries[name]
        if IMPORT_PATH.fullmatch(name):
            return DatasetEntry(name, _import_loader(name))
        return None

    def local_path(self, source: str) -> Path | None:
        """The path ``source`` names by the module's rule, or None if it names a dataset."""
        if source.startswith(FILE_PREFIX):
            return Path(source.removeprefix(FILE_PREFIX)).expanduser()
        self._load()
        if source in self._entries or IMPORT_PATH.fullmatch(source):
            return None
        path = Path(source).expanduser()
        looks_like_a_path = (
            "/" in source
            or "\\" in source
            or source.startswith((".", "~"))
            or source.lower().endswith(LOCAL_SUFFIXES)
        )
        return path if looks_like_a_path or path.exists() else None

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        from splitnn.datasets.builtin import register_builtins

        register_builtins(self)
        for point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loader = point.load()
            except Exception as exc:  # an installed package's code: any failure, one line
                raise DatasetError(
                    f"dataset {point.name} ({ENTRY_POINT_GROUP} entry point {point.value}): "
                    f"cannot load it ({type(exc).__name__}: {exc})"
                ) from None
            self.register(point.name, loader)


def _import_loader(path: str) -> Loader:
    try:
        return import_callable(path, "dataset")
    except ValueError as exc:
        raise DatasetError(str(exc)) from None


# The process's registry: what the CLI, the services and a user's ``register_dataset`` share.
DATASETS = DatasetRegistry()


def register_dataset(name: str, loader: Loader, *, description: str = "") -> None:
    """Add a data source to the process's registry (see the module's docs)."""
    DATASETS.register(name, loader, description=description)


def dataset_names() -> tuple[str, ...]:
    """The datasets the process knows by name (built-ins first)."""
    return DATASETS.names()


def local_path(source: str) -> Path | None:
    """The local path ``source`` names by the module's rule, or None for a named dataset."""
    return DATASETS.local_path(source)


def load_dataset(
    source: str,
    split: Split,
    *,
    data_dir: Path | None = None,
    seed: int = 0,
    synthetic_size: int = 2000,
    input_shape: Sequence[int] | None = None,
    registry: DatasetRegistry | None = None,
) -> ArrayDataset:
    """One split of ``source``: a named dataset or local data (by the module's rule).

    ``seed`` only matters for "synthetic" (its class templates), ``data_dir`` for "cifar10",
    ``synthetic_size`` is the size of the synthetic split; ``input_shape`` (C, H, W) is what a
    folder of images is converted to (default 3 x 32 x 32). ``registry``: where names are looked
    up (default: the process's).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    registry = DATASETS if registry is None else registry
    path = registry.local_path(source)
    if path is not None:
        from splitnn.datasets.local import load_local  # Pillow, only when files are read

        return load_local(path, split, input_shape=input_shape).dataset
    entry = registry.entry(source)
    if entry is None:
        raise DatasetError(
            f"unknown dataset {source!r}; known datasets: {', '.join(registry.names())}, "
            "'package.module:loader' for your own, or a path (a folder of class "
            "sub-folders of images, a .npz with x and y, a .csv with a label column)"
        )
    offered = {
        "data_dir": data_dir,
        "seed": seed,
        "synthetic_size": synthetic_size,
        "input_shape": None if input_shape is None else tuple(input_shape),
    }
    return entry.load(split, **offered)
