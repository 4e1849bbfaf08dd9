"""Where training data comes from, and how an emulated run shares it among devices.

- :mod:`~splitnn.datasets.registry`: sources by name or path (``load_dataset``), the built-ins
  and a user's loaders (``register_dataset``, ``package.module:loader``, the ``ares.datasets``
  entry points). The rule that tells a name from a path is in its docs.
- :mod:`~splitnn.datasets.local`: a device's own files (``load_local``): a folder of class
  sub-folders of images, a ``.npz``, a ``.csv``.
- :mod:`~splitnn.datasets.checks`: whether a dataset fits a model (``check_against``).
- :mod:`~splitnn.datasets.partitions`: ``iid``, ``label_skew`` and ``dirichlet:ALPHA`` shards.
"""

from splitnn.data import ArrayDataset, DatasetError, Split
from splitnn.datasets.checks import check_against, fit_problem
from splitnn.datasets.local import LocalData, load_local
from splitnn.datasets.partitions import (
    PartitionError,
    PartitionScheme,
    parse_partition,
    partition_indices,
    shard,
)
from splitnn.datasets.registry import (
    DATASETS,
    DatasetEntry,
    DatasetRegistry,
    Loader,
    dataset_names,
    load_dataset,
    local_path,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DatasetEntry",
    "DatasetError",
    "DatasetRegistry",
    "Loader",
    "LocalData",
    "PartitionError",
    "PartitionScheme",
    "Split",
    "check_against",
    "dataset_names",
    "fit_problem",
    "load_dataset",
    "load_local",
    "local_path",
    "parse_partition",
    "partition_indices",
    "register_dataset",
    "shard",
]
