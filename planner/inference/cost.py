"""The serving cost model: expected latency and device energy of one request.

A device at cut ``c`` with threshold ``t`` runs its blocks in order; after block ``p`` it
evaluates the exit head at ``p`` (when exits are on and an exit sits there) and answers if the
head is confident enough. With ``f_p`` the fraction of requests leaving at exit ``p <= c`` and
``r = 1 - sum f_p`` the rest:

    D_p   = sum over blocks 1..p of the device's seconds per sample
            + sum over exit heads at positions <= p of their seconds (exits on only)
    D     = sum_p f_p D_p + r D_c                                  expected device compute
    U     = sent_bytes(c) * wire_scale * 8 / B                     one send of the cut tensor
    A     = answer_bytes * 8 / B'                                  the answer coming back
    C_c   = sum over blocks c+1..L of the edge's seconds per sample

    latency = D + r (U + Theta + C_c + A)                  (c < L)
    energy  = P_c D + P_t r U + P_r r A                    (planner.energy.device_energy_j)

At cut L nothing is sent: the requests an early exit does not answer are answered by the full
model on the device (latency = energy / P_c = D). At cut 0 the device computes nothing and sends
the raw input (``sent_bytes(0) = input_bytes``). Theta (``overhead_s``) is the per-request
network overhead, paid only by requests the edge answers, and, as in the training cost model,
counted in time only. The device's idle power while it waits for the edge is not counted (as in
the paper). Every request is equally likely to need any exit, so these are means per request.

:func:`request_cost` is the definition, one setting at a time; :func:`option_costs` computes the
same for many settings of one device with numpy (what the solver uses; a property test checks the
two agree through the solver and its brute force).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from planner.energy import device_energy_j
from planner.inference.points import exits_on
from planner.inference.profiles import ServingDevice, ServingEdge, ServingModel

__all__ = ["RequestCost", "option_costs", "request_cost"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class RequestCost:
    """Expected cost of one request at one setting (see the module docstring)."""

    latency_s: float
    energy_j: float
    local_fraction: float  # answered on the device: early exits, and at cut L everything
    compute_s: float  # D
    transmit_s: float  # r U
    receive_s: float  # r A
    send_s: float  # U: one send of the cut tensor, whether or not a request needs it


def request_cost(
    device: ServingDevice,
    edge: ServingEdge,
    model: ServingModel,
    cut: int,
    threshold: float,
    exit_fraction: Mapping[int, float],
) -> RequestCost:
    """One request's expected latency and device energy at (``cut``, ``threshold``)."""
    L = model.num_blocks
    heads = exits_on(threshold)

    def reach(p: int) -> float:  # D_p
        seconds = sum(device.forward_s[:p])
        if heads:
            seconds += sum(s for q, s in device.exit_head_s.items() if q <= p)
        return seconds

    early = sum(exit_fraction.values())
    rest = max(1.0 - early, 0.0)
    compute = sum(f * reach(p) for p, f in exit_fraction.items()) + rest * reach(cut)
    if cut >= L:
        energy = device_energy_j(device.power, compute, 0.0, 0.0)
        return RequestCost(compute, energy, 1.0, compute, 0.0, 0.0, 0.0)
    send = model.sent_bytes(cut) * device.wire_scale * 8.0 / device.uplink_bps
    answer = model.answer_bytes * 8.0 / device.downlink_bps
    remote = send + device.overhead_s + sum(edge.forward_s[cut:]) + answer
    latency = compute + rest * remote
    energy = device_energy_j(device.power, compute, rest * send, rest * answer)
    return RequestCost(latency, energy, min(early, 1.0), compute, rest * send, rest * answer, send)


@dataclass(frozen=True, slots=True)
class OptionCosts:
    """:func:`request_cost` for many settings of one device, as arrays in the given order."""

    latency_s: FloatArray
    energy_j: FloatArray
    local_fraction: FloatArray
    send_s: FloatArray


def option_costs(
    device: ServingDevice,
    edge: ServingEdge,
    model: ServingModel,
    cuts: Sequence[int],
    thresholds: Sequence[float],
    exit_fractions: Sequence[Mapping[int, float]],
) -> OptionCosts:
    """Latency, energy and local fraction of each setting ``(cuts[k], thresholds[k])`` whose
    early exits take ``exit_fractions[k]`` (see the module docstring)."""
    L = model.num_blocks
    cut = np.asarray(cuts, dtype=np.int64)
    on = np.array([exits_on(t) for t in thresholds], dtype=np.float64)
    # fractions[k, p]: share of setting k's requests leaving at exit p (column 0 stays 0).
    fractions = np.zeros((cut.size, L + 1))
    for k, mapping in enumerate(exit_fractions):
        for p, f in mapping.items():
            fractions[k, p] = f
    blocks = np.concatenate([[0.0], np.cumsum(device.forward_s)])
    head_s = np.zeros(L + 1)
    for p, s in device.exit_head_s.items():
        head_s[p] = s
    heads = np.cumsum(head_s)
    early = fractions.sum(axis=1)
    rest = np.maximum(1.0 - early, 0.0)
    # Exits-off settings have no early fractions, so reach with heads only matters where on.
    compute = fractions @ (blocks + heads) + rest * (blocks[cut] + on * heads[cut])
    edge_after = np.concatenate([np.cumsum(np.asarray(edge.forward_s)[::-1])[::-1], [0.0]])
    sent = np.array([model.sent_bytes(int(c)) for c in cut], dtype=np.float64)
    send = sent * device.wire_scale * 8.0 / device.uplink_bps
    remote = cut < L
    answer = np.where(remote, model.answer_bytes * 8.0 / device.downlink_bps, 0.0)
    overhead = np.where(remote, device.overhead_s, 0.0)
    latency = compute + rest * (send + overhead + edge_after[cut] + answer)
    energy = device_energy_j(device.power, compute, rest * send, rest * answer)
    local = np.where(remote, np.minimum(early, 1.0), 1.0)
    return OptionCosts(latency, energy, local, send)
