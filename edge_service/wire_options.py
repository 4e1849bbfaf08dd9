"""Which wire formats the planner may choose for a device, and what each costs it.

A format is offered when the edge's settings list it (``wire_formats``), the device's hello says
it speaks it, no per-device setting fixes the device's format, and, at each cut, its accuracy
cost measured on the edge's held-out data is within ``wire_accuracy_bound`` points
(``edge_service.wire_calibration``). Its encode and decode time is the device's own measurement
where its profile carries one, else the edge's (said in the plan's inputs). Pure: the driver
passes everything in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from planner import WireOption
from schemas import usable_wire_dtype, wire_itemsize
from schemas.messages import WireDtype

__all__ = ["AccuracyCosts", "allowed_summary", "codec_s_per_byte", "wire_options"]

MB = 1e6


class AccuracyCosts(Protocol):
    """The calibration's answer (edge_service.wire_calibration.WireAccuracy)."""

    def allowed(self, cut: int, fmt: str, bound_points: float) -> bool: ...

    def why_not(self, cut: int, fmt: str, bound_points: float) -> str: ...


def codec_s_per_byte(encode_and_decode_s_per_mb: float) -> float:
    """Seconds per float32 byte crossing: per batch each side encodes one tensor and decodes one
    of the same size (activations up, gradients down), so 2 MB cross per encode + decode of 1."""
    return encode_and_decode_s_per_mb / (2 * MB)


def wire_options(
    *,
    configured: WireDtype,
    candidates: Sequence[WireDtype],
    supported: Iterable[str],
    blocks: int,
    accuracy: AccuracyCosts | None,
    bound_points: float,
    edge_codec_s_per_mb: Mapping[str, float],
    device_codec_s_per_mb: Mapping[WireDtype, float] | None,
) -> tuple[WireOption, ...]:
    """The device's options, its configured (usable) format first; () when there is no choice.

    ``*_codec_s_per_mb``: encode + decode seconds per MB of float32 tensor, per format; a device
    without its own figures is priced at the edge's.
    """
    known = set(supported)
    first = usable_wire_dtype(configured, known)
    names = [first, *(f for f in candidates if f in known and f != first)]
    if len(names) == 1:
        return ()
    options = []
    for name in names:
        edge = edge_codec_s_per_mb.get(name, 0.0)
        own = device_codec_s_per_mb.get(name, edge) if device_codec_s_per_mb else edge
        cuts, held_back = _allowed_cuts(name, first, blocks, accuracy, bound_points)
        options.append(
            WireOption(
                name,
                wire_itemsize(name) / wire_itemsize("float32"),
                codec_s_per_byte=codec_s_per_byte(own),
                edge_codec_s_per_byte=codec_s_per_byte(edge),
                cuts=cuts,
                held_back=held_back,
            )
        )
    return tuple(options)


def _allowed_cuts(
    name: WireDtype,
    first: WireDtype,
    blocks: int,
    accuracy: AccuracyCosts | None,
    bound_points: float,
) -> tuple[frozenset[int] | None, str]:
    """Cuts where ``name`` is within the bound, and one line on where it is not."""
    if name == "float32" or name == first:
        return None, ""  # exact, or what the operator configured: never held back
    if accuracy is None:
        return frozenset(), f"{name} held back: its accuracy cost is not measured yet"
    split_cuts = range(1, blocks)
    out = [c for c in split_cuts if not accuracy.allowed(c, name, bound_points)]
    if not out:
        return None, ""
    more = f" (and at cuts {', '.join(map(str, out[1:]))})" if len(out) > 1 else ""
    return frozenset(split_cuts) - set(out), accuracy.why_not(out[0], name, bound_points) + more


def allowed_summary(
    accuracy: AccuracyCosts, formats: Iterable[str], blocks: int, bound_points: float
) -> str:
    """One line for the log: where each lossy format is within the bound."""
    parts = []
    for fmt in formats:
        if fmt == "float32":
            continue
        cuts = [c for c in range(1, blocks) if accuracy.allowed(c, fmt, bound_points)]
        parts.append(f"{fmt} at cuts {','.join(map(str, cuts)) or 'none'}")
    return f"within {bound_points:g} points: " + ("; ".join(parts) or "no lossy format")
