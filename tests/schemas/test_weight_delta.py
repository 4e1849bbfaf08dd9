"""Weight deltas: what the receiver rebuilds is what the sender says it holds, bit for bit,
within half a scale of the values; deltas only where smaller; integer tensors exact; every
delta that does not fit its base refused with a reason; and the messages that carry them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas import (
    Hello,
    ModelInfo,
    RoundStart,
    TrainConfig,
    WeightsMeta,
    WeightsResync,
    parse_meta,
    parse_weights_traffic,
    to_meta,
)
from schemas.codec import CodecError, decode_frame, encode_frame
from schemas.quantization import QuantFormat, QuantizedTensor, quantize
from schemas.weight_delta import (
    WEIGHT_WIRES,
    apply_weights,
    delta_format,
    encode_weights,
    tensor_wire_bytes,
    usable_weight_wire,
    weight_scale,
)

formats = st.sampled_from(["int8", "int4"])
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=9)
values = st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def state_and_base(draw):
    """A few float32 tensors and a base near them (the weights a round started from)."""
    names = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4, unique=True))
    state, base = {}, {}
    for name in names:
        shape = draw(shapes)
        base[name] = draw(hnp.arrays(np.float32, shape, elements=values))
        step = draw(hnp.arrays(np.float32, shape, elements=st.floats(-10, 10, width=32)))
        state[name] = (base[name] + step).astype(np.float32)
    return state, base


def _frame_tensors(encoded):
    """The tensors as the receiver decodes them from a frame."""
    frame = decode_frame(encode_frame({}, encoded.tensors))
    return {**frame.tensors, **frame.quantized}


@given(pair=state_and_base(), fmt=formats)
@settings(max_examples=300, deadline=None)
def test_the_receiver_rebuilds_exactly_what_the_sender_says_it_holds(pair, fmt):
    state, base = pair
    encoded = encode_weights(state, base, fmt)
    rebuilt = apply_weights(_frame_tensors(encoded), base)
    assert rebuilt.keys() == state.keys()
    for name, value in state.items():
        np.testing.assert_array_equal(rebuilt[name], encoded.held[name])  # bit for bit
        assert rebuilt[name].dtype == np.float32
        assert rebuilt[name].flags.writeable
        tensor = encoded.tensors[name]
        if not isinstance(tensor, QuantizedTensor):
            np.testing.assert_array_equal(rebuilt[name], value)
            continue
        # Within half a scale of its row's delta (plus float32 rounding of the additions).
        scale = tensor.scale.astype(np.float64)
        if tensor.axis == 0:
            scale = scale.reshape(-1, *[1] * (value.ndim - 1))
        error = np.abs(rebuilt[name].astype(np.float64) - value.astype(np.float64))
        bound = scale * 0.5001
        ulp = np.spacing(np.abs(value).astype(np.float32)).astype(np.float64) * 2
        assert (error <= bound + ulp).all()


@given(pair=state_and_base(), fmt=formats)
@settings(max_examples=200, deadline=None)
def test_a_delta_travels_only_where_it_is_smaller(pair, fmt):
    state, base = pair
    encoded = encode_weights(state, base, fmt)
    for name, tensor in encoded.tensors.items():
        whole = tensor_wire_bytes(name, state[name])
        delta = quantize(state[name] - base[name], fmt, axis=0 if state[name].ndim >= 2 else None)
        if isinstance(tensor, QuantizedTensor):
            assert tensor_wire_bytes(name, tensor) < whole
        else:
            assert tensor_wire_bytes(name, delta) >= whole
    # What the frame really takes: the tensors' bytes plus the frame's array and its meta.
    assert len(encode_frame({}, encoded.tensors)) == encoded.wire_bytes + 2


def test_a_large_part_travels_in_about_a_quarter_or_an_eighth():
    rng = np.random.default_rng(0)
    base = {"w": rng.standard_normal((128, 4096), dtype=np.float32)}
    state = {"w": base["w"] + 0.01 * rng.standard_normal((128, 4096), dtype=np.float32)}
    whole = encode_weights(state, None, None).wire_bytes
    assert encode_weights(state, base, "int8").wire_bytes < 0.26 * whole
    assert encode_weights(state, base, "int4").wire_bytes < 0.13 * whole


def test_integer_and_other_dtypes_travel_whole_and_exact():
    base: dict[str, np.ndarray] = {
        "counter": np.array(7, dtype=np.int64),
        "half": np.ones((4, 4), dtype=np.float16),
        "w": np.zeros((8, 16), dtype=np.float32),
    }
    state: dict[str, np.ndarray] = {
        "counter": np.array(19, dtype=np.int64),
        "half": np.full((4, 4), 2, dtype=np.float16),
        "w": np.full((8, 16), 0.5, dtype=np.float32),
    }
    encoded = encode_weights(state, base, "int8")
    assert not isinstance(encoded.tensors["counter"], QuantizedTensor)
    assert not isinstance(encoded.tensors["half"], QuantizedTensor)
    assert isinstance(encoded.tensors["w"], QuantizedTensor)
    assert encoded.deltas == 1
    rebuilt = apply_weights(_frame_tensors(encoded), base)
    assert rebuilt["counter"] == 19
    assert rebuilt["counter"].dtype == np.int64
    np.testing.assert_array_equal(rebuilt["half"], state["half"])


def test_without_a_base_or_a_format_everything_travels_whole():
    state = {"w": np.ones((8, 16), dtype=np.float32)}
    cases: list[tuple[dict[str, np.ndarray] | None, QuantFormat | None]] = [
        (None, "int8"),
        ({"w": np.zeros((8, 16), np.float32)}, None),
    ]
    for base, fmt in cases:
        encoded = encode_weights(state, base, fmt)
        assert encoded.deltas == 0
        np.testing.assert_array_equal(encoded.held["w"], state["w"])
        assert not np.shares_memory(encoded.held["w"], state["w"])


def test_tensors_the_base_lacks_or_shapes_it_does_not_match_travel_whole():
    base = {"w": np.zeros((8, 16), np.float32)}
    state = {"w": np.ones((8, 17), np.float32), "deeper": np.ones((8, 16), np.float32)}
    assert encode_weights(state, base, "int8").deltas == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_value_travels_whole_for_the_receiver_to_refuse(bad):
    state = {"w": np.ones((8, 16), np.float32)}
    state["w"][3, 4] = bad
    encoded = encode_weights(state, {"w": np.zeros((8, 16), np.float32)}, "int8")
    assert encoded.deltas == 0
    assert not np.isfinite(encoded.held["w"]).all()


# --- deltas that do not fit their base ---------------------------------------------------------

BASE: dict[str, np.ndarray] = {"w": np.zeros((8, 16), np.float32), "n": np.array(3, np.int64)}
DELTA = quantize(np.full((8, 16), 0.25, np.float32), "int8", axis=0)


@pytest.mark.parametrize(
    ("reason", "tensors", "base"),
    [
        ("no_base", {"w": DELTA}, None),
        ("unknown_tensor", {"v": DELTA}, BASE),
        ("bad_shape", {"w": quantize(np.ones((8, 15), np.float32), "int8")}, BASE),
        ("bad_dtype", {"n": quantize(np.ones((), np.float32), "int8")}, BASE),
    ],
)
def test_a_delta_that_does_not_fit_its_base_is_refused_with_a_reason(reason, tensors, base):
    frame = decode_frame(encode_frame({}, tensors))
    with pytest.raises(CodecError) as info:
        apply_weights({**frame.tensors, **frame.quantized}, base)
    assert info.value.reason == reason


def test_a_fitting_delta_is_added_to_its_base():
    rebuilt = apply_weights({"w": DELTA, "n": np.array(4, np.int64)}, BASE)
    np.testing.assert_allclose(rebuilt["w"], 0.25, atol=1e-3)
    assert rebuilt["n"] == 4


# --- weight wires and the messages that carry them ---------------------------------------------


def test_weight_wires_fall_back_to_what_a_device_reads():
    assert usable_weight_wire("int8-delta", WEIGHT_WIRES) == "int8-delta"
    assert usable_weight_wire("int4-delta", ("float32", "int8-delta")) == "int8-delta"
    assert usable_weight_wire("int8-delta", ("float32",)) == "float32"
    assert usable_weight_wire("float32", WEIGHT_WIRES) == "float32"
    assert [weight_scale(w) for w in ("float32", "int8-delta", "int4-delta")] == [1, 0.25, 0.125]
    assert delta_format("float32") is None
    assert delta_format("int4-delta") == "int4"


def _start(**changes) -> RoundStart:
    train = TrainConfig(lr=0.1, batch_size=4, batches=2, batch_timeout_s=5)
    model = ModelInfo(name="small_cnn", input_shape=(1, 8, 8), num_classes=10)
    fields = dict(session="s", round=3, cut=2, model=model, train=train, deadline_s=30)
    return RoundStart(**{**fields, **changes})


def test_new_fields_are_left_out_at_their_defaults_for_older_peers():
    plain = to_meta(_start())
    assert "weights_base" not in plain
    assert "weight_wire" not in plain["train"]
    train = _start().train.model_copy(update={"weight_wire": "int8-delta"})
    meta = to_meta(_start(weights_base=2, train=train))
    assert meta["weights_base"] == 2
    assert meta["train"]["weight_wire"] == "int8-delta"
    assert parse_meta(RoundStart, meta).weights_base == 2
    weights = WeightsMeta(device_id="d", round=3, cut=2, samples=1, batches=1, busy_s=0.0)
    assert "weights_base" not in to_meta(weights)
    assert to_meta(weights.model_copy(update={"weights_base": 3}))["weights_base"] == 3


def test_a_version_1_edge_is_not_told_of_weight_wires():
    hello = Hello(
        device_id="d", instance="i", agent_version="0", samples=1, dataset="digits",
        input_shape=(1, 8, 8), num_classes=10, weight_wires=WEIGHT_WIRES,
    )  # fmt: skip
    assert "weight_wires" not in to_meta(hello, 1)
    assert Hello.model_validate({**to_meta(hello, 1), "v": 2}).weight_wires == ("float32",)


def test_the_weights_channel_carries_parts_and_resync_requests():
    resync = WeightsResync(device_id="d", round=3, weights_base=2, held=1, reason="bad_base")
    assert parse_weights_traffic(to_meta(resync)) == resync
    weights = WeightsMeta(device_id="d", round=3, cut=2, samples=1, batches=1, busy_s=0.0)
    assert parse_weights_traffic(to_meta(weights)) == weights
