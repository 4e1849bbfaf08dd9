"""Weight deltas: the device part's weights on the wire as their change from a base both
sides hold.

The device part's weights travel twice a round: down with the round start, up with the part.
Since a round starts from the last round's average, both sides hold a common base: down, the
start the device trained from last time; up, this round's start. A weight wire ``int8-delta``
or ``int4-delta`` sends each float32 tensor as ``value - base``, quantised
(``schemas.quantization``: one scale and zero point per output channel, axis 0, for a tensor
of rank 2 or more; one for the whole tensor below), wherever that is smaller than the tensor
itself; the receiver adds it to its base. Every other tensor travels whole as a plain array:
integer ones exact (BatchNorm's ``num_batches_tracked``), and any tensor the base lacks (a cut
moved deeper), whose shape or dtype differs, or whose delta would not be smaller.

So in a frame whose message names a ``weights_base`` a quantised tensor is a delta against
it, a plain array a value; without a base no tensor may be quantised.

Both sides reconstruct with the same function on the same bits (:func:`apply_weights`; the
sender's :func:`encode_weights` computes what the receiver will hold with it), so the sender
knows exactly what the receiver holds: take the next delta against that and a quantisation
error never accumulates; it is carried into the next delta.

Every delta that does not fit its base is refused with a reason (``CodecError``): a delta
without a base (``no_base``), for a tensor the base lacks (``unknown_tensor``), of another
shape (``bad_shape``) or against a base tensor that is not float32 (``bad_dtype``).

Pure numpy: schemas never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import msgpack
import numpy as np

from schemas.errors import CodecError
from schemas.quantization import (
    QuantFormat,
    QuantizedTensor,
    WireTensor,
    bits_per_element,
    header_of,
    quantize,
)

WeightWire = Literal["float32", "int8-delta", "int4-delta"]
WEIGHT_WIRES: tuple[WeightWire, ...] = get_args(WeightWire)
# What a hello that does not list its weight wires means: an agent from before the deltas.
LEGACY_WEIGHT_WIRES: tuple[WeightWire, ...] = ("float32",)
WEIGHT_WIRES_NARROWEST_FIRST: tuple[WeightWire, ...] = ("int4-delta", "int8-delta", "float32")
_DELTA_FORMATS: Mapping[str, QuantFormat] = {"int8-delta": "int8", "int4-delta": "int4"}
DELTA_DTYPE = np.dtype("<f4")  # deltas are of float32 tensors only, added in float32

Weights = Mapping[str, np.ndarray]


def delta_format(wire: str) -> QuantFormat | None:
    """The quantised format of a weight wire's deltas; None for full float32 weights."""
    return _DELTA_FORMATS.get(wire)


def usable_weight_wire(wanted: WeightWire, supported: Iterable[str]) -> WeightWire:
    """``wanted`` if the device reads and sends it, else the narrowest wider one it does
    (float32 at worst: every device does)."""
    known = set(supported)
    wider = WEIGHT_WIRES_NARROWEST_FIRST[WEIGHT_WIRES_NARROWEST_FIRST.index(wanted) :]
    return next((w for w in wider if w in known), "float32")


def weight_scale(wire: WeightWire) -> float:
    """Bytes of the weights on ``wire`` per byte of float32 weights, as the planner prices
    them: a quarter for int8 deltas, an eighth for int4. What it leaves out: the 5 bytes of
    scale and zero point per output channel (a row of hundreds to thousands of values), the
    small tensors that travel whole, and a round start with no base yet (full weights)."""
    fmt = delta_format(wire)
    return 1.0 if fmt is None else bits_per_element(fmt) / 32


@dataclass(frozen=True)
class EncodedWeights:
    """Weights as they travel, and what the receiver holds once it applied them."""

    tensors: dict[str, WireTensor]
    held: dict[str, np.ndarray]

    @property
    def deltas(self) -> int:
        """How many tensors travel as deltas."""
        return sum(isinstance(t, QuantizedTensor) for t in self.tensors.values())

    @property
    def wire_bytes(self) -> int:
        """Bytes of the tensors in the frame: headers, scales, zero points and data."""
        return sum(tensor_wire_bytes(name, t) for name, t in self.tensors.items())

    @property
    def data_bytes(self) -> int:
        """Bytes of the tensors' data: values, or codes with their scales and zero points."""
        return sum(int(t.nbytes) for t in self.tensors.values())


def encode_weights(
    values: Weights, base: Weights | None, fmt: QuantFormat | None
) -> EncodedWeights:
    """``values`` for the wire: a tensor as its delta against ``base`` in ``fmt`` where that
    is allowed and smaller, else whole (``fmt`` or ``base`` None: all whole)."""
    tensors: dict[str, WireTensor] = {}
    held: dict[str, np.ndarray] = {}
    for name, value in values.items():
        reference = None if base is None else base.get(name)
        delta = None
        if fmt is not None and reference is not None and _deltable(value, reference):
            delta = _quantised_delta(value, reference, fmt)
        if (
            reference is not None
            and delta is not None
            and tensor_wire_bytes(name, delta) < tensor_wire_bytes(name, value)
        ):
            tensors[name], held[name] = delta, _added(reference, delta)
        else:
            tensors[name], held[name] = value, np.array(value, copy=True)
    return EncodedWeights(tensors, held)


def apply_weights(tensors: Mapping[str, WireTensor], base: Weights | None) -> dict[str, np.ndarray]:
    """The weights a frame's ``tensors`` carry: deltas added to ``base``, values copied (fresh,
    writable arrays either way). CodecError with a reason for a delta that does not fit."""
    held: dict[str, np.ndarray] = {}
    for name, tensor in tensors.items():
        if not isinstance(tensor, QuantizedTensor):
            held[name] = np.array(tensor, copy=True)
            continue
        if base is None:
            raise CodecError("no_base", f"{name!r} is a delta, but there is no base to add it to")
        reference = base.get(name)
        if reference is None:
            raise CodecError("unknown_tensor", f"delta for {name!r}, which the base lacks")
        if tensor.shape != reference.shape:
            raise CodecError(
                "bad_shape",
                f"delta for {name!r} of shape {list(tensor.shape)}; the base's is "
                f"{list(reference.shape)}",
            )
        if reference.dtype != DELTA_DTYPE:
            raise CodecError(
                "bad_dtype", f"delta for {name!r}, whose base is {reference.dtype}, not float32"
            )
        held[name] = _added(reference, tensor)
    return held


def tensor_wire_bytes(name: str, tensor: WireTensor) -> int:
    """Bytes ``tensor`` takes in a frame (``schemas.codec``): its header and its bin."""
    if isinstance(tensor, QuantizedTensor):
        header: dict[str, Any] = header_of(name, tensor)
        data = int(tensor.data.nbytes)
    else:
        header = {"name": name, "dtype": tensor.dtype.name, "shape": list(tensor.shape)}
        data = int(tensor.nbytes)
    pair = 1  # [header, bin]: a msgpack array of two
    bin_marker = 2 if data < 2**8 else 3 if data < 2**16 else 5
    return pair + len(msgpack.packb(header, use_bin_type=True)) + bin_marker + data


def _deltable(value: np.ndarray, reference: np.ndarray) -> bool:
    return (
        value.dtype == DELTA_DTYPE
        and reference.dtype == DELTA_DTYPE
        and value.shape == reference.shape
    )


def _quantised_delta(
    value: np.ndarray, reference: np.ndarray, fmt: QuantFormat
) -> QuantizedTensor | None:
    """``value - reference`` in ``fmt``; None where it cannot be (not finite: the value then
    travels whole, and the receiver's own checks refuse it)."""
    with np.errstate(over="ignore", invalid="ignore"):
        delta = np.subtract(value, reference, dtype=np.float32)
    try:
        return quantize(delta, fmt, axis=0 if delta.ndim >= 2 else None)
    except CodecError:
        return None


def _added(reference: np.ndarray, delta: QuantizedTensor) -> np.ndarray:
    """``reference + delta`` in float32: the one reconstruction both sides compute."""
    with np.errstate(over="ignore"):
        added: np.ndarray = np.add(reference, delta.dequantize(), dtype=np.float32)
    return added
