"""The frame codec: exact round trips, zero-copy decode, and a clear error for bad input."""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas.codec import (
    SUPPORTED_DTYPES,
    CodecError,
    decode_frame,
    encode_frame,
)

dtypes = st.sampled_from(sorted(SUPPORTED_DTYPES))
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
arrays = st.builds(lambda d, s: (d, s), dtypes, shapes).flatmap(
    lambda ds: hnp.arrays(np.dtype(ds[0]), ds[1])
)
metas = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(st.integers(-(2**31), 2**31), st.text(max_size=8), st.booleans(), st.none()),
    max_size=5,
)


@given(meta=metas, tensors=st.dictionaries(st.text(min_size=1, max_size=6), arrays, max_size=4))
@settings(max_examples=300, deadline=None)
def test_round_trip_is_exact_for_every_dtype_and_shape(meta, tensors):
    frame = decode_frame(encode_frame(meta, tensors))
    assert frame.meta == meta
    assert list(frame.tensors) == list(tensors)
    for name, original in tensors.items():
        decoded = frame.tensors[name]
        assert decoded.dtype == original.dtype
        assert decoded.shape == original.shape
        assert decoded.tobytes() == np.ascontiguousarray(original).tobytes()  # NaN-safe


def test_decode_is_zero_copy_and_read_only():
    array = np.arange(1 << 16, dtype=np.float32)
    payload = encode_frame({"k": 1}, {"a": array})
    decoded = decode_frame(payload).tensors["a"]
    assert not decoded.flags.writeable
    assert not decoded.flags.owndata
    assert np.shares_memory(decoded, np.frombuffer(payload, dtype=np.uint8))


def test_non_contiguous_and_big_endian_inputs_are_normalised():
    base = np.arange(12, dtype=">i4").reshape(3, 4)
    decoded = decode_frame(encode_frame({}, {"t": base.T})).tensors["t"]
    np.testing.assert_array_equal(decoded, base.T)
    assert decoded.dtype == np.dtype("<i4")


def test_size_limit_is_enforced_both_ways():
    tensors = {"a": np.zeros(1000, dtype=np.float32)}
    with pytest.raises(CodecError) as err:
        encode_frame({}, tensors, max_bytes=1000)
    assert err.value.reason == "too_large"
    payload = encode_frame({}, tensors)
    with pytest.raises(CodecError, match="too_large"):
        decode_frame(payload, max_bytes=len(payload) - 1)


def test_unsupported_dtype_is_refused():
    with pytest.raises(CodecError, match="bad_dtype"):
        encode_frame({}, {"c": np.zeros(2, dtype=np.complex64)})


def _raw(*parts):
    return msgpack.packb(list(parts), use_bin_type=True)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "truncated"),
        (b"\xc1", "malformed"),
        (_raw(), "malformed"),
        (_raw([1, 2]), "malformed"),
        (_raw({}, [{"name": "a", "dtype": "float32", "shape": [2]}]), "malformed"),
        (_raw({}, [{"name": "a", "dtype": "float32", "shape": [2]}, b"\0" * 7]), "bad_shape"),
        (_raw({}, [{"name": "a", "dtype": "object", "shape": [1]}, b"\0"]), "bad_dtype"),
        (_raw({}, [{"name": "a", "dtype": "uint8", "shape": [-1]}, b"\0"]), "bad_shape"),
        (_raw({}, [{"name": "a", "dtype": "uint8", "shape": [1.5]}, b"\0"]), "bad_shape"),
        (_raw({}, [{"name": "a", "dtype": "uint8", "shape": [1], "x": 1}, b"\0"]), "malformed"),
        (_raw({}, [{"name": "", "dtype": "uint8", "shape": [1]}, b"\0"]), "malformed"),
        (
            _raw(
                {},
                [{"name": "a", "dtype": "uint8", "shape": [1]}, b"\0"],
                [{"name": "a", "dtype": "uint8", "shape": [1]}, b"\0"],
            ),
            "malformed",
        ),
        (_raw({}) + b"\0", "malformed"),
        (_raw({1: 2}), "malformed"),
    ],
)
def test_malformed_payloads_raise_codec_error(payload, reason):
    with pytest.raises(CodecError) as err:
        decode_frame(payload)
    assert err.value.reason == reason


def test_truncation_anywhere_raises_codec_error():
    payload = encode_frame({"round": 3}, {"a": np.arange(10, dtype=np.int16)})
    for cut in range(len(payload)):
        with pytest.raises(CodecError):
            decode_frame(payload[:cut])


@given(st.binary(max_size=512))
@settings(max_examples=2000, deadline=None)
def test_random_bytes_never_escape_as_other_errors(data):
    with contextlib.suppress(CodecError):
        decode_frame(data)
