"""The round's ``attempt`` on the wire: a later field, left out while 0 (older peers refuse
unknown fields), present once a round is repeated, and 0 in a message that does not carry it."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import (
    ActivationMeta,
    ModelInfo,
    RoundAbort,
    RoundClose,
    RoundStart,
    SchemaError,
    TrainConfig,
    WeightsMeta,
    WeightsResync,
    parse_ctrl,
    parse_meta,
    parse_weights_traffic,
    to_json,
    to_meta,
)
from schemas.messages import PROTOCOL_VERSIONS, WireModel

# Every message that carries a round's attempt.
Attempted = RoundStart | RoundClose | RoundAbort | ActivationMeta | WeightsMeta | WeightsResync

MODEL = ModelInfo(name="small_cnn", input_shape=(1, 8, 8), num_classes=10)
TRAIN = TrainConfig(lr=0.01, batch_size=8, batches=2, batch_timeout_s=1.0)


def messages(attempt: int) -> list[Attempted]:
    """One of every kind that carries a round's attempt."""
    return [
        RoundStart(session="s", round=3, cut=2, model=MODEL, train=TRAIN, deadline_s=10.0,
                   weights_base=2, attempt=attempt),
        RoundClose(session="s", round=3, attempt=attempt),
        RoundAbort(session="s", round=3, reason="r", attempt=attempt),
        ActivationMeta(device_id="dev-0", round=3, seq=1, attempt=attempt),
        WeightsMeta(device_id="dev-0", round=3, cut=2, samples=8, batches=1, busy_s=0.5,
                    weights_base=3, attempt=attempt),
        WeightsResync(device_id="dev-0", round=3, weights_base=2, held=1, reason="r",
                      attempt=attempt),
    ]  # fmt: skip


def kind_of(message: Attempted) -> str:
    return message.kind


# to_meta(..., version=1) of each, as it was before attempts existed (recorded then).
V1_BEFORE_ATTEMPTS: dict[str, dict[str, Any]] = {
    "round_start": {
        "v": 1, "kind": "round_start", "session": "s", "round": 3, "split": 2,
        "model": {"v": 2, "name": "small_cnn", "num_classes": 10, "labels": None,
                  "in_channels": 1, "image_size": 8},
        "train": {"v": 2, "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 8,
                  "batches": 2, "batch_timeout_s": 1.0, "wire_dtype": "float32"},
        "deadline_s": 10.0, "weights_base": 2,
    },
    "round_close": {"v": 1, "kind": "round_close", "session": "s", "round": 3},
    "round_abort": {"v": 1, "kind": "round_abort", "session": "s", "round": 3, "reason": "r"},
    "act": {"v": 1, "device_id": "dev-0", "round": 3, "kind": "act", "seq": 1},
    "weights": {
        "v": 1, "device_id": "dev-0", "round": 3, "kind": "weights", "split": 2, "samples": 8,
        "batches": 1, "busy_s": 0.5, "loss": None, "rtt_median_s": None, "uplink_s": 0.0,
        "downlink_s": 0.0, "behind_s": 0.0, "weights_base": 3,
    },
    "weights_resync": {
        "v": 1, "device_id": "dev-0", "round": 3, "kind": "weights_resync", "weights_base": 2,
        "held": 1, "reason": "r",
    },
}  # fmt: skip


def parse(message: Attempted, data: object) -> Attempted:
    """``data`` read back as the peer that receives ``message`` reads it."""
    read: WireModel
    if isinstance(message, RoundStart | RoundClose | RoundAbort):
        read = parse_ctrl(data)
    elif isinstance(message, ActivationMeta):
        read = parse_meta(ActivationMeta, data)
    else:
        read = parse_weights_traffic(data)
    assert isinstance(read, type(message))
    return read


def test_every_kind_is_covered() -> None:
    assert sorted(kind_of(m) for m in messages(0)) == sorted(V1_BEFORE_ATTEMPTS)


@pytest.mark.parametrize("message", messages(0), ids=kind_of)
def test_attempt_0_is_left_out_in_both_versions(message: Attempted) -> None:
    for version in PROTOCOL_VERSIONS:
        assert "attempt" not in to_meta(message, version)
    assert b"attempt" not in to_json(message)


@pytest.mark.parametrize("message", messages(0), ids=kind_of)
def test_version_1_of_attempt_0_is_what_it_was_before_attempts(message: Attempted) -> None:
    assert to_meta(message, 1) == V1_BEFORE_ATTEMPTS[kind_of(message)]


@pytest.mark.parametrize("message", messages(0), ids=kind_of)
def test_a_message_from_before_attempts_reads_as_attempt_0(message: Attempted) -> None:
    old = V1_BEFORE_ATTEMPTS[kind_of(message)]
    read = parse(message, old)
    assert read.attempt == 0
    assert read.model_copy(update={"v": message.v}) == message
    # Version 2 without the field, as every peer sent it before attempts: the same.
    assert parse(message, to_meta(message)) == message


@pytest.mark.parametrize("message", messages(1), ids=kind_of)
def test_a_later_attempt_travels_and_reads_back(message: Attempted) -> None:
    meta = to_meta(message)
    assert meta["attempt"] == 1
    read = parse(message, meta)
    assert read.attempt == 1
    assert read == message


@pytest.mark.parametrize("message", messages(0), ids=kind_of)
def test_a_negative_attempt_is_refused(message: Attempted) -> None:
    with pytest.raises(SchemaError):
        parse(message, {**to_meta(message), "attempt": -1})
