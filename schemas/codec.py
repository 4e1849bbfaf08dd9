"""The msgpack frame codec for tensors.

A frame is one msgpack array ``[meta, [header, bin], [header, bin], ...]``: ``meta`` is a small
map of metadata (validated by the schema models, not here), each tensor is a header map
``{"name", "dtype", "shape"}`` followed by its raw little-endian bytes.

Encoding packs straight from a memoryview of the contiguous array (one copy, into the output).
Decoding never copies tensor data: it walks the frame, finds each bin's offset and wraps it with
``numpy.frombuffer`` (read-only views into the payload). Everything malformed raises CodecError.

A quantised tensor (``schemas.quantization``: int8, int4) has the header ``{"name", "format",
"shape", "axis", "scale", "zero"}`` instead, its bin the packed codes; it decodes to a
:class:`~schemas.quantization.QuantizedTensor` in ``Frame.quantized`` (codes zero-copy, checked
against the shape, scales and zero points checked), never to a plain array.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from schemas import quantization
from schemas.errors import CodecError as CodecError
from schemas.quantization import QuantizedTensor, WireTensor

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_META_BYTES = 64 * 1024
MAX_TENSORS = 4096
MAX_NDIM = 8
MAX_DIM = 2**31 - 1  # numpy cannot even shape an empty array with dimensions past 2**63

# Wire dtype names; always little-endian on the wire.
_DTYPE_NAMES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"]
SUPPORTED_DTYPES: Mapping[str, np.dtype[Any]] = {
    name: np.dtype(name).newbyteorder("<") for name in _DTYPE_NAMES
}
_HEADER_KEYS = frozenset({"name", "dtype", "shape"})


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame: metadata and named tensors (read-only views into the payload); the
    quantised ones apart, since they are no arrays until dequantised."""

    meta: dict[str, Any]
    tensors: dict[str, np.ndarray]
    quantized: dict[str, QuantizedTensor] = field(default_factory=dict)

    def names(self) -> set[str]:
        return set(self.tensors) | set(self.quantized)

    def tensor(self, name: str) -> WireTensor | None:
        """The tensor called ``name``, plain or quantised; None if the frame has none."""
        return self.tensors[name] if name in self.tensors else self.quantized.get(name)


def encode_frame(
    meta: Mapping[str, Any],
    tensors: Mapping[str, WireTensor] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> bytes:
    """Pack metadata and tensors into one payload of at most ``max_bytes``; metadata past
    ``MAX_META_BYTES`` is refused here, not only by the receiver's decode."""
    packed_meta = msgpack.packb(dict(meta), use_bin_type=True)
    if len(packed_meta) > MAX_META_BYTES:
        raise CodecError(
            "too_large", f"metadata of {len(packed_meta)} bytes exceeds {MAX_META_BYTES}"
        )
    parts: list[Any] = [dict(meta)]
    for name, array in (tensors or {}).items():
        parts.append(_encode_tensor(name, array))
    payload = msgpack.packb(parts, use_bin_type=True)
    if len(payload) > max_bytes:
        raise CodecError("too_large", f"frame of {len(payload)} bytes exceeds {max_bytes}")
    return payload


def _encode_tensor(name: str, array: WireTensor) -> list[Any]:
    if isinstance(array, QuantizedTensor):
        return [quantization.header_of(name, array), array.data.data.cast("B")]
    dtype_name = array.dtype.name
    if dtype_name not in SUPPORTED_DTYPES:
        raise CodecError("bad_dtype", f"tensor {name!r} has unsupported dtype {dtype_name}")
    # np.ascontiguousarray would turn a zero-dim array into shape (1,): keep the shape.
    wire = np.asarray(array, dtype=SUPPORTED_DTYPES[dtype_name])
    if not wire.flags.c_contiguous:
        wire = wire.copy(order="C")
    header = {"name": name, "dtype": dtype_name, "shape": list(wire.shape)}
    # reshape(-1) keeps zero-dim arrays packable; a contiguous array's view costs no copy.
    return [header, wire.reshape(-1).data.cast("B")]


def decode_frame(
    payload: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Frame:
    """Decode a payload from ``encode_frame``; tensors are zero-copy read-only views."""
    view = memoryview(payload).cast("B")
    if len(view) > max_bytes:
        raise CodecError("too_large", f"frame of {len(view)} bytes exceeds {max_bytes}")
    count, pos = _array_header(view, 0)
    if count < 1:
        raise CodecError("malformed", "frame has no metadata")
    if count - 1 > MAX_TENSORS:
        raise CodecError("malformed", f"frame holds {count - 1} tensors, limit {MAX_TENSORS}")
    meta, pos = _small_object(view, pos)
    if not isinstance(meta, dict):
        raise CodecError("malformed", "frame metadata is not a map")
    tensors: dict[str, np.ndarray] = {}
    quantized: dict[str, QuantizedTensor] = {}
    for _ in range(count - 1):
        name, array, pos = _decode_tensor(payload, view, pos)
        if name in tensors or name in quantized:
            raise CodecError("malformed", f"tensor {name!r} appears twice")
        if isinstance(array, QuantizedTensor):
            quantized[name] = array
        else:
            tensors[name] = array
    if pos != len(view):
        raise CodecError("malformed", f"{len(view) - pos} trailing bytes after the frame")
    return Frame(meta=meta, tensors=tensors, quantized=quantized)


def _decode_tensor(
    payload: bytes | bytearray | memoryview, view: memoryview, pos: int
) -> tuple[str, WireTensor, int]:
    pair, pos = _array_header(view, pos)
    if pair != 2:
        raise CodecError("malformed", "a tensor must be [header, bin]")
    # Only a quantised tensor's header holds bins (its scales and zero points).
    header, pos = _small_object(view, pos, max_bin_len=MAX_META_BYTES)
    if not isinstance(header, dict) or set(header) not in (
        _HEADER_KEYS,
        quantization.HEADER_KEYS,
    ):
        raise CodecError(
            "malformed",
            f"tensor header must have exactly {sorted(_HEADER_KEYS)} "
            f"or {sorted(quantization.HEADER_KEYS)}",
        )
    name, shape = header["name"], header["shape"]
    if not isinstance(name, str) or not name:
        raise CodecError("malformed", "tensor name must be a non-empty string")
    _check_shape(name, shape)
    if "format" in header:
        size, pos = _bin_header(view, pos)
        quantization.check_header(header, tuple(shape), size)
        data = np.frombuffer(payload, dtype=np.uint8, count=size, offset=pos)
        return name, quantization.from_header(header, tuple(shape), data), pos + size
    dtype_name = header["dtype"]
    if not isinstance(dtype_name, str) or dtype_name not in SUPPORTED_DTYPES:
        raise CodecError("bad_dtype", f"tensor {name!r} has unsupported dtype {dtype_name!r}")
    size, pos = _bin_header(view, pos)
    dtype = SUPPORTED_DTYPES[dtype_name]
    if size != math.prod(shape) * dtype.itemsize:
        raise CodecError(
            "bad_shape", f"tensor {name!r}: {size} bytes do not hold {dtype_name}{shape}"
        )
    array = np.frombuffer(payload, dtype=dtype, count=math.prod(shape), offset=pos)
    return name, array.reshape(shape), pos + size


def _check_shape(name: str, shape: Any) -> None:
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)
    ):
        raise CodecError("bad_shape", f"tensor {name!r} has invalid shape {shape!r}")
    if math.prod(max(d, 1) for d in shape) > MAX_DIM:
        # Even an empty array cannot take a shape whose other dimensions multiply past this.
        raise CodecError("bad_shape", f"tensor {name!r} has an absurd shape {shape!r}")


def _array_header(view: memoryview, pos: int) -> tuple[int, int]:
    marker = _byte(view, pos)
    if 0x90 <= marker <= 0x9F:
        return marker & 0x0F, pos + 1
    if marker == 0xDC:
        return _unpack(">H", view, pos + 1), pos + 3
    if marker == 0xDD:
        return _unpack(">I", view, pos + 1), pos + 5
    raise CodecError("malformed", f"expected a msgpack array at byte {pos}")


def _bin_header(view: memoryview, pos: int) -> tuple[int, int]:
    marker = _byte(view, pos)
    widths = {0xC4: (">B", 2), 0xC5: (">H", 3), 0xC6: (">I", 5)}
    if marker not in widths:
        raise CodecError("malformed", f"expected msgpack bin data at byte {pos}")
    fmt, skip = widths[marker]
    size = _unpack(fmt, view, pos + 1)
    if pos + skip + size > len(view):
        raise CodecError("truncated", f"bin of {size} bytes at byte {pos} runs past the end")
    return size, pos + skip


def _small_object(view: memoryview, pos: int, max_bin_len: int = 0) -> tuple[Any, int]:
    """Unpack one small msgpack object (metadata, header) without touching tensor bytes."""
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_buffer_size=MAX_META_BYTES, max_bin_len=max_bin_len
    )
    unpacker.feed(view[pos : pos + MAX_META_BYTES])
    try:
        obj = unpacker.unpack()
    except msgpack.OutOfData:
        raise CodecError("malformed", f"metadata at byte {pos} is truncated or too large") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CodecError("malformed", f"invalid msgpack at byte {pos}: {exc}") from None
    return obj, pos + unpacker.tell()


def _byte(view: memoryview, pos: int) -> int:
    if pos >= len(view):
        raise CodecError("truncated", f"frame ends at byte {pos}")
    return int(view[pos])


def _unpack(fmt: str, view: memoryview, pos: int) -> int:
    try:
        return int(struct.unpack_from(fmt, view, pos)[0])
    except struct.error:
        raise CodecError("truncated", f"frame ends inside a header at byte {pos}") from None
