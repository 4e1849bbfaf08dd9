"""What replicas and the coordinator exchange beside the lease, as frames: a replica's share of
a round (its devices' outcomes and the FedAvg partial sum of their parts) and the global model.

Pure conversions; the member and the coordinator publish and read them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from edge_service.rounds import DeviceResult
from schemas.cluster import DeviceOutcome, GlobalModelMeta, PartialMeta
from schemas.codec import Frame, encode_frame
from schemas.messages import SchemaError, parse_json, parse_meta, to_json, to_meta
from splitnn.fedavg import FedAvgPartial
from splitnn.tensors import arrays_to_state, state_to_arrays

_OUTCOME_FIELDS = tuple(f.name for f in dataclasses.fields(DeviceResult) if f.name != "state")


def outcome_of(result: DeviceResult) -> DeviceOutcome:
    """A device's result without its tensors (those are in the partial sum)."""
    fields = {name: getattr(result, name) for name in _OUTCOME_FIELDS}
    return DeviceOutcome(contributed=result.contributed, **fields)


def result_of(outcome: DeviceOutcome) -> DeviceResult:
    """The coordinator's view of a device's result: all but the tensors, which it holds only
    summed into the replica's partial."""
    return DeviceResult(**{name: getattr(outcome, name) for name in _OUTCOME_FIELDS})


# The share's description travels as JSON in a tensor of its own, not in the frame's metadata:
# a replica's outcomes outgrow the metadata limit (schemas.codec) at a few hundred devices.
# "#" cannot start a model state key (those are dotted attribute names).
SHARE_TENSOR = "#share"


def encode_partial(meta: PartialMeta, partial: FedAvgPartial | None, *, max_bytes: int) -> bytes:
    """A replica's share of a round; ``partial`` None: no part of its devices counted."""
    tensors = {SHARE_TENSOR: np.frombuffer(to_json(meta), np.uint8)}
    if partial is not None:
        tensors.update(state_to_arrays(dict(partial.sums)))
    return encode_frame({"kind": meta.kind}, tensors, max_bytes=max_bytes)


def share_meta(frame: Frame) -> PartialMeta:
    """What a share says (who, which round and attempt, its devices' outcomes)."""
    raw = frame.tensors.get(SHARE_TENSOR)
    if frame.meta.get("kind") != "partial" or raw is None or raw.dtype != np.uint8:
        raise SchemaError("malformed", f"a share carries its description in {SHARE_TENSOR!r}")
    return parse_json(PartialMeta, raw.tobytes())


def partial_meta(
    replica: str,
    epoch: int,
    round_no: int,
    attempt: int,
    results: list[DeviceResult],
    partial: FedAvgPartial | None,
) -> PartialMeta:
    return PartialMeta(
        replica=replica,
        epoch=epoch,
        round=round_no,
        attempt=attempt,
        weights=list(partial.weights) if partial else [],
        dtypes={k: str(v).removeprefix("torch.") for k, v in partial.dtypes.items()}
        if partial
        else {},
        results=[outcome_of(r) for r in results],
    )


def decode_partial(frame: Frame) -> tuple[PartialMeta, FedAvgPartial | None]:
    """Raises SchemaError for a share whose tensors do not match what it says."""
    meta = share_meta(frame)
    sums = {k: v for k, v in frame.tensors.items() if k != SHARE_TENSOR}
    if not meta.weights:
        if sums:
            raise SchemaError("bad_tensors", "a share without parts carries tensors")
        return meta, None
    if set(sums) != set(meta.dtypes):
        raise SchemaError("bad_tensors", "the share's tensors and dtypes name different keys")
    dtypes: dict[str, torch.dtype] = {}
    for key, name in meta.dtypes.items():
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise SchemaError("bad_tensors", f"{key}: unknown dtype {name!r}")
        if sums[key].dtype != np.float64:
            raise SchemaError("bad_tensors", f"{key}: sums must be float64")
        dtypes[key] = dtype
    state = arrays_to_state({k: np.array(v) for k, v in sums.items()})
    return meta, FedAvgPartial(sums=state, weights=tuple(meta.weights), dtypes=dtypes)


def encode_model(meta: GlobalModelMeta, state: dict[str, torch.Tensor], *, max_bytes: int) -> bytes:
    return encode_frame(to_meta(meta), state_to_arrays(state), max_bytes=max_bytes)


def decode_model(frame: Frame) -> tuple[GlobalModelMeta, dict[str, torch.Tensor]]:
    meta = parse_meta(GlobalModelMeta, frame.meta)
    # Copies: the frame's arrays are read-only views into the payload.
    return meta, arrays_to_state({k: np.array(v) for k, v in frame.tensors.items()})
