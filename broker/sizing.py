"""How large the broker's packet limit must be for a model: measured on real frames.

The largest messages of the protocol are the model's weights (a round start carries the device
part, a weights upload returns it; at the last cut that is the whole model) and a batch of
activations with its labels at the widest cut (the gradient going back is smaller). Both are
encoded here with the real codec from the real model's shapes (float32, zeros), so the limit
includes the codec's framing; metadata (at most ``MAX_META_BYTES``) and a margin come on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from schemas.codec import MAX_META_BYTES, encode_frame
from splitnn.datasets import dataset_names
from splitnn.models import ModelSpec, build_model, cut_shapes

# Per-sample input (channels, side) and classes of each dataset; a test checks them against
# splitnn.datasets so the two cannot drift apart.
DATASET_INPUTS: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 10),
    "cifar10": (3, 32, 10),
    "synthetic": (3, 32, 10),
}
# Slack for what the measured frames do not cover: a changed model, larger labels, metadata
# growing past its measured size. Costs nothing until a client actually sends that much.
MARGIN = 1.25
ROUND_TO = 64 * 1024
MIN_PAYLOAD = 1024 * 1024  # JSON status of a large fleet must always fit


@dataclass(frozen=True, slots=True)
class FrameSizes:
    """Encoded sizes, in bytes, of the model's largest frames at one batch size."""

    weights: int
    activations: int
    activation_cut: int  # the cut whose activations are largest

    @property
    def largest(self) -> int:
        return max(self.weights, self.activations)

    def payload_limit(self) -> int:
        """max_payload_bytes for the clients: the largest frame, metadata and a margin."""
        need = math.ceil(self.largest * MARGIN) + MAX_META_BYTES
        return max(MIN_PAYLOAD, math.ceil(need / ROUND_TO) * ROUND_TO)


def model_spec(model: str, dataset: str) -> ModelSpec:
    """The spec the edge builds for ``model`` trained on ``dataset``."""
    if dataset not in DATASET_INPUTS:
        raise ValueError(
            f"unknown dataset {dataset!r}; known datasets: {', '.join(dataset_names())}"
        )
    channels, side, classes = DATASET_INPUTS[dataset]
    return ModelSpec(model, (channels, side, side), classes)


def frame_sizes(spec: ModelSpec, batch_size: int) -> FrameSizes:
    """Encode the model's full weights and every cut's activations; report the sizes."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    state = {
        name: np.zeros(tuple(tensor.shape), dtype=_numpy_dtype(str(tensor.dtype)))
        for name, tensor in build_model(spec).state_dict().items()
    }
    weights = len(encode_frame({}, state, max_bytes=2**63))
    labels = np.zeros(batch_size, dtype=np.int64)
    best, best_cut = 0, 1
    # At the last cut everything stays on the device and no activations travel.
    for cut, shape in enumerate(cut_shapes(spec)[:-1], start=1):
        act = np.zeros((batch_size, *shape), dtype=np.float32)
        size = len(encode_frame({}, {"act": act, "labels": labels}, max_bytes=2**63))
        if size > best:
            best, best_cut = size, cut
    return FrameSizes(weights=weights, activations=best, activation_cut=best_cut)


def _numpy_dtype(torch_dtype: str) -> type[np.generic]:
    names: dict[str, type[np.generic]] = {
        "torch.float32": np.float32,
        "torch.float64": np.float64,
        "torch.float16": np.float16,
        "torch.int64": np.int64,
    }
    if torch_dtype not in names:
        raise ValueError(f"model state holds an unexpected dtype {torch_dtype}")
    return names[torch_dtype]
