"""Quantised wire formats: round trips within the error bound, zero-copy codes, and every
malformed or inconsistent header refused with a reason."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas.codec import CodecError, decode_frame, encode_frame
from schemas.quantization import (
    LEVELS,
    QUANT_FORMATS,
    QuantFormat,
    QuantizedTensor,
    channel_axis,
    from_wire,
    packed_bytes,
    quantize,
    to_wire,
    wire_format,
)

formats = st.sampled_from(QUANT_FORMATS)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7)
# Finite floats of every magnitude float32 can hold with room for a channel's range.
values = st.floats(-(2.0**100), 2.0**100, width=32, allow_nan=False, allow_infinity=False)
float_arrays = shapes.flatmap(lambda s: hnp.arrays(np.float32, s, elements=values))


def _per_channel(array: np.ndarray, axis: int | None) -> np.ndarray:
    """(channels, rest): each row one channel's values."""
    if axis is None:
        return array.reshape(1, -1)
    channels = array.shape[axis]
    return np.moveaxis(array, axis, 0).reshape(channels, array.size // channels if channels else 0)


def _check_bound(original: np.ndarray, tensor: QuantizedTensor) -> None:
    decoded = tensor.dequantize()
    assert decoded.dtype == np.float32
    assert decoded.shape == original.shape
    assert np.isfinite(decoded).all()
    error = np.abs(
        _per_channel(decoded.astype(np.float64), tensor.axis)
        - _per_channel(original.astype(np.float64), tensor.axis)
    )
    # scale / 2 per channel, plus float32 rounding of the arithmetic on the way.
    bound = tensor.scale.astype(np.float64) * (0.5 + 1e-4)
    assert (error <= bound[:, None]).all()


@given(array=float_arrays, fmt=formats)
@settings(max_examples=400, deadline=None)
def test_every_value_comes_back_within_half_a_scale_of_its_channel(array, fmt):
    tensor = quantize(array, fmt)
    assert tensor.axis == channel_axis(array.shape)
    channels = 1 if tensor.axis is None else array.shape[1]
    assert tensor.scale.shape == tensor.zero.shape == (channels,)
    assert (tensor.zero <= LEVELS[fmt]).all()
    assert tensor.data.nbytes == packed_bytes(fmt, array.size)
    _check_bound(array, tensor)


@given(
    array=float_arrays,
    fmt=formats,
    meta=st.dictionaries(st.text(max_size=4), st.integers(-(2**31), 2**31)),
)
@settings(max_examples=300, deadline=None)
def test_frame_round_trip_keeps_codes_scales_and_zero_points(array, fmt, meta):
    tensor = quantize(array, fmt)
    labels = np.arange(3, dtype=np.int64)
    frame = decode_frame(encode_frame(meta, {"act": tensor, "labels": labels}))
    assert frame.meta == meta
    assert frame.names() == {"act", "labels"}
    decoded = frame.quantized["act"]
    assert frame.tensor("act") is decoded
    assert (decoded.format, decoded.shape, decoded.axis) == (fmt, array.shape, tensor.axis)
    np.testing.assert_array_equal(decoded.scale, tensor.scale)
    np.testing.assert_array_equal(decoded.zero, tensor.zero)
    np.testing.assert_array_equal(decoded.codes(), tensor.codes())
    np.testing.assert_array_equal(decoded.dequantize(), tensor.dequantize())
    _check_bound(array, decoded)


def test_packed_codes_are_a_zero_copy_view_and_the_frame_is_small():
    array = np.random.default_rng(0).standard_normal((32, 16, 8, 8)).astype(np.float32)
    sizes: tuple[tuple[QuantFormat, float], ...] = (("int8", 1.0), ("int4", 0.5))
    for fmt, per_element in sizes:
        payload = encode_frame({}, {"act": quantize(array, fmt)})
        decoded = decode_frame(payload).quantized["act"]
        assert not decoded.data.flags.writeable
        assert np.shares_memory(decoded.data, np.frombuffer(payload, dtype=np.uint8))
        # Codes plus 5 bytes per channel plus the header's keys.
        assert len(payload) < array.size * per_element + 16 * 5 + 128


def test_zero_travels_exactly_and_a_constant_channel_too():
    array = np.zeros((4, 3, 5), dtype=np.float32)
    array[:, 1] = np.linspace(0.0, 6.0, 20, dtype=np.float32).reshape(4, 5)  # a ReLU output
    array[:, 2] = -2.5
    for fmt in QUANT_FORMATS:
        decoded = quantize(array, fmt).dequantize()
        assert (decoded[:, 0] == 0).all()
        assert (decoded[array == 0] == 0).all()
        np.testing.assert_allclose(decoded[:, 2], -2.5, rtol=1e-6)


def test_wire_helpers_cover_float_and_quantised_formats():
    array = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    for fmt in ("float32", "float16", "int8", "int4"):
        wire = to_wire(array, fmt)
        assert wire_format(wire) == fmt
        back = from_wire(wire)
        assert back.shape == array.shape
        np.testing.assert_allclose(back.astype(np.float32), array, atol=0.07)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_cannot_be_quantised(bad):
    array = np.ones((2, 3, 2), dtype=np.float32)
    array[1, 2, 0] = bad
    with pytest.raises(CodecError) as info:
        quantize(array, "int8")
    assert info.value.reason == "not_finite"


def test_values_too_large_for_float32_codes_are_refused():
    array = np.array([-3.4e38, 3.4e38], dtype=np.float32)
    with pytest.raises(CodecError) as info:
        quantize(array, "int4")
    assert info.value.reason == "bad_scale"


# --- malformed and inconsistent headers -------------------------------------------------------


def _frame(header: dict, data: bytes) -> bytes:
    return msgpack.packb([{}, [header, data]], use_bin_type=True)


def _good(shape=(2, 3, 2), fmt="int8") -> tuple[dict, bytes]:
    tensor = quantize(np.arange(math.prod(shape), dtype=np.float32).reshape(shape), fmt)
    header = {
        "name": "act",
        "format": fmt,
        "shape": list(shape),
        "axis": tensor.axis,
        "scale": tensor.scale.tobytes(),
        "zero": tensor.zero.tobytes(),
    }
    return header, tensor.data.tobytes()


def _reason(header: dict, data: bytes) -> str:
    with pytest.raises(CodecError) as info:
        decode_frame(_frame(header, data))
    return info.value.reason


def test_the_reference_header_decodes():
    header, data = _good()
    assert decode_frame(_frame(header, data)).quantized["act"].shape == (2, 3, 2)


BAD_HEADERS = [
    ("bad_format", lambda h, d: ({**h, "format": "int2"}, d)),
    ("bad_format", lambda h, d: ({**h, "format": 8}, d)),
    ("bad_axis", lambda h, d: ({**h, "axis": 3}, d)),
    ("bad_axis", lambda h, d: ({**h, "axis": -1}, d)),
    ("bad_axis", lambda h, d: ({**h, "axis": "1"}, d)),
    ("bad_axis", lambda h, d: ({**h, "axis": True}, d)),
    ("bad_scale", lambda h, d: ({**h, "scale": h["scale"][:-4]}, d)),
    ("bad_scale", lambda h, d: ({**h, "scale": h["scale"] + h["scale"][:4]}, d)),
    ("bad_scale", lambda h, d: ({**h, "scale": [1.0, 1.0, 1.0]}, d)),
    ("bad_scale", lambda h, d: ({**h, "axis": None}, d)),  # 3 scales for one channel
    ("bad_scale", lambda h, d: ({**h, "scale": np.array([1, np.nan, 1], "<f4").tobytes()}, d)),
    ("bad_scale", lambda h, d: ({**h, "scale": np.array([1, np.inf, 1], "<f4").tobytes()}, d)),
    ("bad_scale", lambda h, d: ({**h, "scale": np.array([1, 0, 1], "<f4").tobytes()}, d)),
    ("bad_scale", lambda h, d: ({**h, "scale": np.array([1, -2, 1], "<f4").tobytes()}, d)),
    ("bad_scale", lambda h, d: ({**h, "scale": np.array([1, 3e38, 1], "<f4").tobytes()}, d)),
    ("bad_zero", lambda h, d: ({**h, "zero": h["zero"][:-1]}, d)),
    ("bad_zero", lambda h, d: ({**h, "zero": "abc"}, d)),
    ("bad_shape", lambda h, d: (h, d[:-1])),
    ("bad_shape", lambda h, d: (h, d + b"\0")),
    ("bad_shape", lambda h, d: ({**h, "shape": [2, 3, 3]}, d)),
    ("bad_shape", lambda h, d: ({**h, "shape": [2, -3, 2]}, d)),
    ("bad_shape", lambda h, d: ({**h, "shape": "2x3"}, d)),
    ("malformed", lambda h, d: ({**h, "dtype": "float32"}, d)),
    ("malformed", lambda h, d: ({k: v for k, v in h.items() if k != "zero"}, d)),
    ("malformed", lambda h, d: ({**h, "name": ""}, d)),
]


@pytest.mark.parametrize(("reason", "spoil"), BAD_HEADERS)
def test_each_inconsistent_header_is_refused_with_its_reason(reason, spoil):
    header, data = spoil(*_good())
    assert _reason(header, data) == reason


def test_int4_zero_points_beyond_15_and_dirty_padding_are_refused():
    header, data = _good((3, 1, 3), "int4")  # 9 codes: the last byte's high nibble is padding
    assert _reason({**header, "zero": bytes([16])}, data) == "bad_zero"
    assert _reason(header, data[:-1] + bytes([data[-1] | 0xF0])) == "bad_shape"


@given(
    header=st.fixed_dictionaries(
        {
            "name": st.one_of(st.text(max_size=3), st.integers(-5, 5)),
            "format": st.one_of(st.sampled_from([*QUANT_FORMATS, "int2", "float32"]), st.none()),
            "shape": st.one_of(st.lists(st.integers(-2, 6), max_size=4), st.text(max_size=2)),
            "axis": st.one_of(st.none(), st.integers(-2, 5), st.booleans()),
            "scale": st.one_of(st.binary(max_size=24), st.floats(), st.none()),
            "zero": st.one_of(st.binary(max_size=6), st.integers(0, 300)),
        }
    ),
    data=st.binary(max_size=40),
)
@settings(max_examples=1500, deadline=None)
def test_fuzzed_headers_decode_consistently_or_are_refused_with_a_reason(header, data):
    reasons = {"bad_format", "bad_axis", "bad_scale", "bad_zero", "bad_shape", "malformed"}
    try:
        frame = decode_frame(_frame(header, data))
    except CodecError as exc:
        refused = exc.reason
    else:
        # What decodes is consistent: codes for the shape, and every value a finite float32.
        tensor = frame.quantized[header["name"]]
        assert tensor.codes().size == math.prod(tensor.shape)
        assert np.isfinite(tensor.dequantize()).all()
        return
    assert refused in reasons
