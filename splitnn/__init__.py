"""Split-learning core: models as chains of blocks, cutting them, FedAvg, and the data."""

from splitnn.data import ArrayDataset, BatchStream, DatasetError
from splitnn.datasets import (
    dataset_names,
    load_dataset,
    parse_partition,
    partition_indices,
    register_dataset,
    shard,
)
from splitnn.errors import SplitError
from splitnn.fedavg import FedAvgSum, fedavg
from splitnn.model_registry import model_names, register_model
from splitnn.models import (
    ModelSpec,
    build_blocks,
    build_model,
    cut_shapes,
    num_blocks,
    state_keys,
)
from splitnn.partition import (
    block_index,
    build_part,
    device_blocks,
    load_part_state,
    merge_states,
    server_blocks,
    split_state,
    validate_cut,
)
from splitnn.profiling import BlockProfile, cumulative, profile_blocks, scale_profile

__all__ = [
    "ArrayDataset",
    "BatchStream",
    "BlockProfile",
    "DatasetError",
    "FedAvgSum",
    "ModelSpec",
    "SplitError",
    "block_index",
    "build_blocks",
    "build_model",
    "build_part",
    "cumulative",
    "cut_shapes",
    "dataset_names",
    "device_blocks",
    "fedavg",
    "load_dataset",
    "load_part_state",
    "merge_states",
    "model_names",
    "num_blocks",
    "parse_partition",
    "partition_indices",
    "profile_blocks",
    "register_dataset",
    "register_model",
    "scale_profile",
    "server_blocks",
    "shard",
    "split_state",
    "state_keys",
    "validate_cut",
]
