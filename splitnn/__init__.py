"""Split-learning core: models as chains of blocks, cutting them, FedAvg, and the data."""

from splitnn.data import (
    DATASET_NAMES,
    ArrayDataset,
    BatchStream,
    DatasetError,
    load_dataset,
    partition_indices,
    shard,
)
from splitnn.errors import SplitError
from splitnn.fedavg import fedavg
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
    "DATASET_NAMES",
    "ArrayDataset",
    "BatchStream",
    "BlockProfile",
    "DatasetError",
    "ModelSpec",
    "SplitError",
    "block_index",
    "build_blocks",
    "build_model",
    "build_part",
    "cumulative",
    "cut_shapes",
    "device_blocks",
    "fedavg",
    "load_dataset",
    "load_part_state",
    "merge_states",
    "model_names",
    "num_blocks",
    "partition_indices",
    "profile_blocks",
    "register_model",
    "scale_profile",
    "server_blocks",
    "shard",
    "split_state",
    "state_keys",
    "validate_cut",
]
