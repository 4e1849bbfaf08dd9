"""Quantised wire formats for activations and gradients: ``int8`` and ``int4``, affine.

A float tensor ``x`` travels as unsigned codes ``q`` with a scale and a zero point per channel,
``x ~ scale * (q - zero)``: 8 bits a value for ``int8`` (codes 0..255), 4 bits for ``int4``
(codes 0..15, two to a byte, the even element in the low nibble). Channels are axis 1 of a
tensor of rank 3 or more (N x C x ...: a convolution's activations and their gradients); a
tensor of rank 0 to 2 has one scale for all of it (``axis`` None). Each channel's range is
widened to hold 0, so zero (ReLU's most common output) travels exactly, and every value of a
channel comes back within ``scale / 2``.

In a frame (``schemas.codec``) such a tensor is ``[header, bin]`` like any other, its header
``{"name", "format", "shape", "axis", "scale", "zero"}``: ``scale`` the channels' float32
scales and ``zero`` their uint8 zero points, each as msgpack bin (little-endian), and the bin
the packed codes. :func:`check_header` rejects every inconsistent header with a reason; the
decoded tensor is a :class:`QuantizedTensor` whose codes are a read-only view into the payload,
dequantised (vectorised) by whoever needs the floats.

Pure numpy: schemas never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from schemas.errors import CodecError

QuantFormat = Literal["int8", "int4"]
QUANT_FORMATS: tuple[QuantFormat, ...] = get_args(QuantFormat)
LEVELS: Mapping[str, int] = {"int8": 255, "int4": 15}  # the largest code of each format
BITS: Mapping[str, int] = {"int8": 8, "int4": 4}
HEADER_KEYS = frozenset({"name", "format", "shape", "axis", "scale", "zero"})
CHANNEL_AXIS = 1
SCALE_DTYPE = np.dtype("<f4")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)
# Scales are rounded up to float32, never down: a channel's range then always fits its codes.
_SCALE_ROUND_UP = 1.0 + 2.0**-20


@dataclass(frozen=True, slots=True)
class QuantizedTensor:
    """A tensor as it travels: packed codes and, per channel, a scale and a zero point."""

    format: QuantFormat
    shape: tuple[int, ...]
    axis: int | None  # the channel axis; None: one scale for the whole tensor
    scale: np.ndarray  # float32, one per channel
    zero: np.ndarray  # uint8, one per channel
    data: np.ndarray  # uint8, the packed codes (flat)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes it occupies on the wire, codes and per-channel parameters (not the header's
        keys)."""
        return int(self.data.nbytes + self.scale.nbytes + self.zero.nbytes)

    def codes(self) -> np.ndarray:
        """One uint8 code per element, flat (a view of the payload for ``int8``)."""
        if self.format == "int8":
            return self.data
        codes = np.empty(2 * self.data.size, dtype=np.uint8)
        np.bitwise_and(self.data, 0x0F, out=codes[0::2])
        np.right_shift(self.data, 4, out=codes[1::2])
        return codes[: self.size]

    def dequantize(self) -> np.ndarray:
        """The float32 values: ``scale * (code - zero)`` per channel, vectorised."""
        values = self.codes().astype(np.float32).reshape(_channel_view(self.shape, self.axis))
        values -= self.zero.astype(np.float32)[None, :, None]
        values *= self.scale[None, :, None]
        return values.reshape(self.shape)


WireTensor = np.ndarray | QuantizedTensor


def channel_axis(shape: tuple[int, ...]) -> int | None:
    """Per channel (axis 1) for N x C x ... tensors; one scale for rank 0 to 2."""
    return CHANNEL_AXIS if len(shape) >= 3 else None


def packed_bytes(fmt: QuantFormat, size: int) -> int:
    """Bytes of the packed codes of ``size`` elements."""
    return size if fmt == "int8" else (size + 1) // 2


def quantize(
    array: np.ndarray, fmt: QuantFormat, *, axis: int | Literal["auto"] | None = "auto"
) -> QuantizedTensor:
    """Quantise a float array (any float dtype; computed in float32) to ``fmt``.

    ``axis``: the channel axis, one scale and zero point per index along it (None: one for the
    whole tensor); "auto": :func:`channel_axis` (activations' and gradients' channels).
    Raises CodecError ``not_finite`` for NaN or Inf, ``bad_scale`` for values too large for
    ``fmt``'s codes to come back as float32.
    """
    if fmt not in LEVELS:
        raise CodecError("bad_format", f"unknown quantised format {fmt!r}")
    x = np.asarray(array, dtype=np.float32)
    if not np.isfinite(x).all():
        raise CodecError("not_finite", "cannot quantise NaN or Inf")
    levels = LEVELS[fmt]
    if isinstance(axis, str):
        axis = channel_axis(x.shape)
    elif axis is not None and not 0 <= axis < x.ndim:
        raise ValueError(f"axis {axis} is not an axis of shape {x.shape}")
    view = x.reshape(_channel_view(x.shape, axis))
    channels = view.shape[1]
    if view.size:
        # The range in float64: hi - lo of two float32 extremes may overflow float32.
        lo = np.minimum(view.min(axis=(0, 2)).astype(np.float64), 0.0)
        hi = np.maximum(view.max(axis=(0, 2)).astype(np.float64), 0.0)
    else:
        lo = hi = np.zeros(channels)
    span = hi - lo
    scale64 = np.where(span > 0, np.maximum(span / levels * _SCALE_ROUND_UP, _FLOAT32_TINY), 1.0)
    scale = scale64.astype(SCALE_DTYPE)
    zero = np.clip(np.rint(-lo / scale.astype(np.float64)), 0, levels).astype(np.uint8)
    _check_parameters(fmt, scale, zero)
    inverse = (1.0 / scale.astype(np.float64)).astype(np.float32)
    codes = view * inverse[None, :, None]
    codes += zero.astype(np.float32)[None, :, None]
    np.rint(codes, out=codes)
    np.clip(codes, 0, levels, out=codes)
    flat = codes.astype(np.uint8).reshape(-1)
    return QuantizedTensor(fmt, tuple(x.shape), axis, scale, zero, _pack(fmt, flat))


def to_wire(array: np.ndarray, fmt: str) -> WireTensor:
    """``array`` as it travels in wire format ``fmt`` (a float dtype name or a quantised
    format)."""
    quantised = quant_format(fmt)
    if quantised is not None:
        return quantize(array, quantised)
    return np.asarray(array, dtype=np.dtype(fmt))


def from_wire(tensor: WireTensor) -> np.ndarray:
    """The values of a tensor as it travelled: dequantised, or the array itself."""
    if isinstance(tensor, QuantizedTensor):
        return tensor.dequantize()
    return tensor


def wire_format(tensor: WireTensor) -> str:
    """The wire format a tensor travels in: its quantised format or its dtype's name."""
    if isinstance(tensor, QuantizedTensor):
        return tensor.format
    return str(tensor.dtype.name)


def quant_format(value: object) -> QuantFormat | None:
    """``value`` as a quantised format's name; None if it is not one."""
    return next((fmt for fmt in QUANT_FORMATS if value == fmt), None)


def bits_per_element(fmt: str) -> int:
    """Bits of one element on the wire in format ``fmt`` (before per-channel parameters)."""
    if fmt in BITS:
        return BITS[fmt]
    return 8 * int(np.dtype(fmt).itemsize)


def header_of(name: str, tensor: QuantizedTensor) -> dict[str, Any]:
    """The tensor's frame header (its packed codes follow as the bin)."""
    return {
        "name": name,
        "format": tensor.format,
        "shape": list(tensor.shape),
        "axis": tensor.axis,
        "scale": tensor.scale.astype(SCALE_DTYPE, copy=False).tobytes(),
        "zero": tensor.zero.tobytes(),
    }


def check_header(header: Mapping[str, Any], shape: tuple[int, ...], packed: int) -> None:
    """Check a quantised tensor's header (shape already checked by the codec) against the
    ``packed`` bytes of codes that follow it; CodecError with a reason if inconsistent."""
    name, axis = header["name"], header["axis"]
    fmt = quant_format(header["format"])
    if fmt is None:
        raise CodecError("bad_format", f"tensor {name!r} has unknown format {header['format']!r}")
    if axis is not None and (type(axis) is not int or not 0 <= axis < len(shape)):
        raise CodecError("bad_axis", f"tensor {name!r}: axis {axis!r} is not one of {shape}")
    channels = 1 if axis is None else shape[axis]
    scale, zero = header["scale"], header["zero"]
    if not isinstance(scale, bytes) or len(scale) != channels * SCALE_DTYPE.itemsize:
        raise CodecError("bad_scale", f"tensor {name!r}: needs {channels} float32 scales")
    if not isinstance(zero, bytes) or len(zero) != channels:
        raise CodecError("bad_zero", f"tensor {name!r}: needs {channels} uint8 zero points")
    size = math.prod(shape)
    if packed != packed_bytes(fmt, size):
        raise CodecError(
            "bad_shape",
            f"tensor {name!r}: {packed} bytes do not hold {size} {fmt} codes "
            f"({packed_bytes(fmt, size)} bytes)",
        )
    scales = np.frombuffer(scale, dtype=SCALE_DTYPE)
    _check_parameters(fmt, scales, np.frombuffer(zero, dtype=np.uint8), name)


def from_header(
    header: Mapping[str, Any], shape: tuple[int, ...], data: np.ndarray
) -> QuantizedTensor:
    """The tensor of a header that passed :func:`check_header`; ``data`` its packed codes."""
    fmt: QuantFormat = header["format"]
    tensor = QuantizedTensor(
        fmt,
        shape,
        header["axis"],
        np.frombuffer(header["scale"], dtype=SCALE_DTYPE),
        np.frombuffer(header["zero"], dtype=np.uint8),
        data,
    )
    if fmt == "int4" and tensor.size % 2 and data[-1] >> 4:
        raise CodecError("bad_shape", f"tensor {header['name']!r}: padding nibble is not 0")
    return tensor


def _check_parameters(
    fmt: QuantFormat, scale: np.ndarray, zero: np.ndarray, name: str = "tensor"
) -> None:
    levels = LEVELS[fmt]
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise CodecError("bad_scale", f"{name!r}: scales must be finite and positive")
    if (zero > levels).any():
        raise CodecError("bad_zero", f"{name!r}: zero points must lie in [0, {levels}]")
    # Every code must come back as a finite float32: |code - zero| * scale within float32.
    reach = np.maximum(zero.astype(np.float64), levels - zero.astype(np.float64))
    if (reach * scale.astype(np.float64) > _FLOAT32_MAX).any():
        raise CodecError("bad_scale", f"{name!r}: scales too large for float32 values")


def _channel_view(shape: tuple[int, ...], axis: int | None) -> tuple[int, int, int]:
    """(outer, channels, inner): the channel axis in the middle, the rest flattened."""
    if axis is None:
        return 1, 1, math.prod(shape)
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])


def _pack(fmt: QuantFormat, codes: np.ndarray) -> np.ndarray:
    if fmt == "int8":
        return codes
    if codes.size % 2:
        codes = np.append(codes, np.uint8(0))
    packed: np.ndarray = np.left_shift(codes[1::2], 4)
    packed |= codes[0::2]
    return packed
