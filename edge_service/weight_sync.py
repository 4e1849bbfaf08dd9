"""The edge's side of weight deltas (``schemas.weight_delta``): what each device holds, the
weights of its round start, and its uploaded part rebuilt.

A device holds the start of the last round whose part it uploaded, exactly as it rebuilt it
from the frame (the edge computes the same bits). The edge keeps that per device once it
accepted the part, with the agent instance that holds it: a restarted agent holds nothing, an
edge restart forgets everything (both then get full weights). A round start goes down as
deltas against it, where the device's weight wire allows and a delta is smaller; any other
tensor whole. The device's part comes up as deltas against the round's start it holds.

Taking every delta against what the device really holds means a quantisation error is never
compounded: whatever one delta lost is in the next one. A device that does not hold the base
after all asks for full weights (``schemas.WeightsResync``; the round driver answers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from edge_service.rejections import Rejected
from schemas import CodecError, Frame, WeightsMeta, WireTensor
from schemas.weight_delta import (
    WeightWire,
    apply_weights,
    delta_format,
    encode_weights,
)
from splitnn.tensors import state_to_arrays


@dataclass(frozen=True)
class HeldStart:
    """The start of round ``round`` as the device's agent ``instance`` holds it."""

    instance: str
    round: int
    weights: dict[str, np.ndarray]


class HeldStarts:
    """Per device: the round start it holds, known from the last part the edge accepted."""

    def __init__(self) -> None:
        self._held: dict[str, HeldStart] = {}

    def of(self, device_id: str, instance: str) -> HeldStart | None:
        """What ``instance`` of the device holds (None: nothing the edge knows of)."""
        held = self._held.get(device_id)
        return held if held is not None and held.instance == instance else None

    def keep(self, device_id: str, held: HeldStart) -> None:
        self._held[device_id] = held

    def forget(self, device_id: str) -> None:
        self._held.pop(device_id, None)


@dataclass
class StartWeights:
    """A device's round-start weights as they travel, and what it holds once it applied them."""

    instance: str  # the agent they are for
    tensors: dict[str, WireTensor]
    held: dict[str, np.ndarray]
    base_round: int | None  # the round start the deltas are against; None: all whole
    data_bytes: int  # of the tensors (values, or codes with their scales and zero points)
    sent_bytes: int = 0  # data bytes of every send so far (a re-send counts again)


class WeightSync:
    """The round driver's weight bookkeeping: each round's start weights per device, and what
    each device holds once the edge accepted its part."""

    def __init__(self) -> None:
        self.held = HeldStarts()

    def starts(
        self,
        parts: Mapping[str, Mapping[str, torch.Tensor]],
        instances: Mapping[str, str],
        wires: Mapping[str, WeightWire],
    ) -> dict[str, StartWeights]:
        """Every device's round-start weights (torch and numpy work: a worker thread's)."""
        starts = {}
        for device_id, state in parts.items():
            instance = instances[device_id]
            held = self.held.of(device_id, instance)
            starts[device_id] = start_weights(state, instance, held, wires[device_id])
        return starts

    def accepted(self, device_id: str, round_no: int, start: StartWeights) -> None:
        """The edge accepted the device's part of ``round_no``: it holds that round's start
        (the device keeps it on sending the part)."""
        self.held.keep(device_id, HeldStart(start.instance, round_no, start.held))

    def resync(
        self, device_id: str, device_state: Mapping[str, torch.Tensor], instance: str
    ) -> StartWeights:
        """The device cannot apply its round start's deltas: forget what it was thought to
        hold; its round start's weights whole."""
        self.held.forget(device_id)
        return full_start(device_state, instance)


def start_weights(
    device_state: Mapping[str, torch.Tensor],
    instance: str,
    held: HeldStart | None,
    wire: WeightWire,
) -> StartWeights:
    """The round start's weights for a device holding ``held`` (None: full weights)."""
    fmt = delta_format(wire)
    base = held.weights if held is not None and fmt is not None else None
    encoded = encode_weights(state_to_arrays(device_state), base, fmt)
    return StartWeights(
        instance=instance,
        tensors=encoded.tensors,
        held=encoded.held,
        base_round=held.round if held is not None and base is not None and encoded.deltas else None,
        data_bytes=encoded.data_bytes,
    )


def full_start(device_state: Mapping[str, torch.Tensor], instance: str) -> StartWeights:
    """The round start's weights whole (a device that cannot apply deltas)."""
    return start_weights(device_state, instance, None, "float32")


def received_weights(
    meta: WeightsMeta, frame: Frame, start: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The part a device uploaded: its deltas added to ``start``, the round's start as it
    holds it. Rejected with a reason for a delta that does not fit (fresh arrays)."""
    if frame.quantized and meta.weights_base != meta.round:
        raise Rejected(
            "bad_base",
            f"deltas against round {meta.weights_base}'s start; this part's base is round "
            f"{meta.round}'s",
        )
    try:
        return apply_weights({**frame.tensors, **frame.quantized}, start)
    except CodecError as exc:
        raise Rejected(exc.reason, exc.detail) from None


def wire_data_bytes(frame: Frame) -> int:
    """Data bytes of a frame's tensors (values, or codes with their scales and zero points)."""
    return sum(int(t.nbytes) for t in frame.tensors.values()) + sum(
        t.nbytes for t in frame.quantized.values()
    )
