"""The device's round start for weight deltas: it rebuilds a delta round start only on the
start it holds (same edge session and round), holds a round's start once its part is sent, and
uploads deltas against it only where the round's weight wire asks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from device_agent.weight_base import WeightBase
from schemas import (
    CodecError,
    Frame,
    ModelInfo,
    QuantizedTensor,
    RoundStart,
    TrainConfig,
    decode_frame,
    encode_frame,
)
from schemas.weight_delta import WeightWire, encode_weights

RNG = np.random.default_rng(0)
FIRST: dict[str, np.ndarray] = {
    "w": RNG.standard_normal((8, 16), dtype=np.float32),
    "n": np.array(1, np.int64),
}


def start(round_no: int, base: int | None = None, *, session: str = "s",
          wire: WeightWire = "int8-delta") -> RoundStart:  # fmt: skip
    train = TrainConfig(lr=0.1, batch_size=4, batches=2, batch_timeout_s=5, weight_wire=wire)
    model = ModelInfo(name="small_cnn", input_shape=(1, 8, 8), num_classes=10)
    return RoundStart(session=session, round=round_no, cut=1, model=model, train=train,
                      deadline_s=30, weights_base=base)  # fmt: skip


def frame(tensors: dict[str, Any]) -> Frame:
    return decode_frame(encode_frame({}, tensors))


def moved(weights: dict[str, np.ndarray], step: float) -> dict[str, np.ndarray]:
    return {k: v + step if v.dtype == np.float32 else v + 1 for k, v in weights.items()}


def held_after_round_one() -> WeightBase:
    base = WeightBase()
    weights = base.start(start(1), frame(FIRST))
    base.sent(start(1))
    np.testing.assert_array_equal(weights["w"], FIRST["w"])
    return base


def test_a_delta_round_start_is_rebuilt_on_the_start_the_device_holds():
    base = held_after_round_one()
    assert base.held_round == 1
    edge = encode_weights(moved(FIRST, 0.1), FIRST, "int8")
    assert edge.deltas == 1
    weights = base.start(start(2, base=1), frame(edge.tensors))
    np.testing.assert_array_equal(weights["w"], edge.held["w"])  # what the edge believes
    assert weights["n"] == 2
    assert base.held_round == 1  # until round 2's part is sent
    base.sent(start(2))
    assert base.held_round == 2


@pytest.mark.parametrize(
    "round_start",
    [start(3, base=2), start(2, base=1, session="another edge"), start(2, base=None)],
    ids=["another round", "another session", "no base named"],
)
def test_deltas_against_a_start_the_device_does_not_hold_are_refused(round_start):
    base = held_after_round_one()
    edge = encode_weights(moved(FIRST, 0.1), FIRST, "int8")
    with pytest.raises(CodecError) as info:
        base.start(round_start, frame(edge.tensors))
    assert info.value.reason == "bad_base"
    with pytest.raises(CodecError):
        WeightBase().start(start(2, base=1), frame(edge.tensors))  # a restarted agent


def test_full_weights_always_apply():
    base = held_after_round_one()
    weights = base.start(start(5, base=None), frame(moved(FIRST, 1.0)))
    np.testing.assert_allclose(weights["w"], FIRST["w"] + 1.0)


def test_the_part_goes_up_as_deltas_only_where_the_weight_wire_asks():
    base = WeightBase()
    weights = base.start(start(1), frame(FIRST))
    trained = moved(weights, 0.05)
    up = base.upload(start(1), trained)
    assert isinstance(up.tensors["w"], QuantizedTensor)
    assert not isinstance(up.tensors["n"], QuantizedTensor)
    whole = base.upload(start(1, wire="float32"), trained)
    assert whole.deltas == 0
    other = base.upload(start(2), trained)  # not the round it started: nothing to delta against
    assert other.deltas == 0
