"""A replica's share and the global model as frames (edge_service.cluster.shares)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_service.cluster.shares import (
    SHARE_TENSOR,
    decode_partial,
    encode_partial,
    partial_meta,
)
from edge_service.rounds import DeviceResult
from schemas.codec import CodecError, decode_frame, encode_frame
from schemas.messages import SchemaError
from splitnn.fedavg import FedAvgSum

MAX_BYTES = 64 * 1024 * 1024


def results(count: int) -> list[DeviceResult]:
    return [
        DeviceResult(f"device-{i:04d}", 2, "ok", batches=10, samples=160, busy_s=1.5, round_s=2.0)
        for i in range(count)
    ]


def test_a_share_of_many_devices_crosses_whole() -> None:
    """600 devices' outcomes are far past a frame's metadata limit: they travel in a tensor."""
    total = FedAvgSum()
    total.add({"w": torch.ones(3), "n": torch.tensor(2)}, 160.0)
    total.add({"w": torch.zeros(3), "n": torch.tensor(4)}, 480.0)
    partial = total.partial()
    many = results(600)
    payload = encode_partial(
        partial_meta("r1", 1, 3, 0, many, partial), partial, max_bytes=MAX_BYTES
    )
    meta, decoded = decode_partial(decode_frame(payload, max_bytes=MAX_BYTES))
    assert [o.device_id for o in meta.results] == [r.device_id for r in many]
    assert decoded is not None
    merged = FedAvgSum()
    merged.merge(decoded)
    torch.testing.assert_close(merged.average()["w"], torch.full((3,), 0.25))
    assert merged.average()["n"].dtype == torch.int64


def test_a_share_without_parts_carries_no_sums() -> None:
    payload = encode_partial(partial_meta("r1", 1, 1, 2, results(2), None), None,
                             max_bytes=MAX_BYTES)  # fmt: skip
    meta, decoded = decode_partial(decode_frame(payload, max_bytes=MAX_BYTES))
    assert decoded is None
    assert (meta.attempt, len(meta.results)) == (2, 2)


def test_a_frame_that_is_no_share_is_refused() -> None:
    with pytest.raises(SchemaError):
        decode_partial(decode_frame(encode_frame({"kind": "partial"}, {})))
    with pytest.raises(SchemaError):
        decode_partial(
            decode_frame(
                encode_frame({"kind": "partial"}, {SHARE_TENSOR: np.frombuffer(b"{", np.uint8)})
            )
        )


def test_metadata_past_the_limit_is_refused_when_encoded() -> None:
    with pytest.raises(CodecError, match="metadata"):
        encode_frame({"filler": "x" * (64 * 1024)})
