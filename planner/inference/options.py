"""One device's options: every setting of the exit table priced for it, which it may take, and
the rule that picks among them.

Objective per device (each device's requests are its own: nothing couples the devices)::

    J = alpha * latency / latency_ref + (1 - alpha) * w * energy / energy_ref

References: the device's own everything-on-edge price (cut 0: the raw input sent, the edge runs
the whole model). Why: it exists for every device whatever its memory, allowed cuts and exits
(it is a scale, priced even where cut 0 is not allowed), it is the first baseline of the issue,
and it does not depend on the exit table, so the scale stays put when observed exit rates correct
the table; J = 1 for "everything on the edge" at any alpha on mains power. A reference under a
nanosecond or nanojoule (a radio drawing no power) is replaced by 1 (the term is then in raw
seconds or joules).

Battery, as in training (:mod:`planner.objective`): w = 1 / max(battery, floor), 1 on mains; a
device below the floor takes its least-energy setting (ties: lower latency).

Which settings compete: those allowed (``allowed_cuts``) and within memory; of these, those with
accuracy >= full accuracy - floor. If none reaches the floor, the most accurate ones compete and
the assignment says ``accuracy_met=False``. Ties: lower J (or energy), then higher accuracy, then
lower cut, then lower threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from planner.errors import PlanningError
from planner.inference.cost import option_costs, request_cost
from planner.inference.plan import Degraded, ServingAssignment, Setting
from planner.inference.points import EXITS_OFF, corrected_fraction, exit_ratio
from planner.inference.problem import ServingInputs
from planner.inference.profiles import ServingDevice
from planner.objective import energy_weight

__all__ = ["ACCURACY_TOLERANCE", "DeviceOptions", "price_device", "reference_costs"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

ACCURACY_TOLERANCE = 1e-12  # an accuracy exactly at the floor meets it despite rounding
_NEGLIGIBLE = 1e-9  # a reference below a nanosecond or nanojoule is no scale: use 1


@dataclass(frozen=True, slots=True, eq=False)
class DeviceOptions:
    """Every setting of the exit table for one device, as parallel arrays."""

    inputs: ServingInputs
    device: ServingDevice
    cuts: IntArray
    thresholds: FloatArray
    exit_fractions: tuple[dict[int, float], ...]  # corrected by the device's observed rate
    latency_s: FloatArray
    energy_j: FloatArray
    local_fraction: FloatArray
    send_s: FloatArray
    accuracy: FloatArray
    usable: BoolArray  # allowed and within memory
    objective: FloatArray
    latency_ref_s: float
    energy_ref_j: float
    weight: float
    forced: bool

    @property
    def accurate(self) -> BoolArray:
        result: BoolArray = self.accuracy >= self.inputs.accuracy_bound - ACCURACY_TOLERANCE
        return result

    def index(self, setting: Setting) -> int | None:
        """The option for (cut, threshold), None if the table has no such point."""
        cut, threshold = setting
        hits = np.flatnonzero((self.cuts == cut) & (self.thresholds == threshold))
        return int(hits[0]) if hits.size else None

    def pool(self) -> tuple[BoolArray, bool]:
        """The options that compete, and whether they meet the accuracy floor."""
        if not self.usable.any():
            raise PlanningError(self.device.device_id, "no cut is allowed and fits its memory")
        pool = self.usable & self.accurate
        if pool.any():
            return pool, True
        best = float(np.max(np.where(self.usable, self.accuracy, -np.inf)))
        return self.usable & (self.accuracy >= best - ACCURACY_TOLERANCE), False

    def best(self, among: BoolArray) -> int:
        """The option the rule picks among ``among`` (which must have one)."""
        order = np.lexsort(self._keys())
        return int(order[np.argmax(among[order])])

    def ranked(self, among: BoolArray) -> list[int]:
        """``among``'s options, best first."""
        order = np.lexsort(self._keys())
        return [int(k) for k in order if among[k]]

    def _keys(self) -> tuple[FloatArray, ...]:
        # np.lexsort sorts by the last key first.
        tail = (self.thresholds, self.cuts.astype(np.float64), -self.accuracy)
        if self.forced:
            return (*tail, self.latency_s, self.energy_j)
        return (*tail, self.objective)

    def assignment(self, k: int, reason: str, *, accuracy_met: bool = True) -> ServingAssignment:
        cut = int(self.cuts[k])
        position, accuracy = self.inputs.exits.deepest_exit(cut)
        return ServingAssignment(
            device_id=self.device.device_id,
            cut=cut,
            threshold=float(self.thresholds[k]),
            latency_s=float(self.latency_s[k]),
            energy_j=float(self.energy_j[k]),
            accuracy=float(self.accuracy[k]),
            local_fraction=float(self.local_fraction[k]),
            objective=float(self.objective[k]),
            reason=reason,
            degraded=Degraded(position, accuracy),
            exit_fraction=dict(self.exit_fractions[k]),
            accuracy_met=accuracy_met,
            forced=self.forced,
            latency_ref_s=self.latency_ref_s,
            energy_ref_j=self.energy_ref_j,
        )


def reference_costs(inputs: ServingInputs, device: ServingDevice) -> tuple[float, float]:
    """The device's (latency_ref, energy_ref): its everything-on-edge price, 0 replaced by 1."""
    edge = request_cost(device, inputs.edge, inputs.model, 0, EXITS_OFF, {})
    latency = edge.latency_s if edge.latency_s > _NEGLIGIBLE else 1.0
    energy = edge.energy_j if edge.energy_j > _NEGLIGIBLE else 1.0
    return latency, energy


def price_device(inputs: ServingInputs, device: ServingDevice) -> DeviceOptions:
    """Every point of the exit table priced for ``device`` (see the module docstring)."""
    points = inputs.exits.points
    ratio = exit_ratio(inputs.exits, device.observed, inputs.correction)
    fractions = tuple(corrected_fraction(p, ratio) for p in points)
    cuts = [p.cut for p in points]
    thresholds = [p.threshold for p in points]
    costs = option_costs(device, inputs.edge, inputs.model, cuts, thresholds, fractions)
    usable = np.array(
        [
            (device.allowed_cuts is None or p.cut in device.allowed_cuts)
            and (
                device.memory_bytes is None
                or inputs.model.memory_needed_bytes(p.cut, p.exits) <= device.memory_bytes
            )
            for p in points
        ],
        dtype=bool,
    )
    latency_ref, energy_ref = reference_costs(inputs, device)
    weight = energy_weight(device.battery_fraction, inputs.battery_floor)
    alpha = inputs.alpha
    objective = alpha * costs.latency_s / latency_ref + (1.0 - alpha) * weight * (
        costs.energy_j / energy_ref
    )
    forced = device.battery_fraction is not None and device.battery_fraction < inputs.battery_floor
    return DeviceOptions(
        inputs=inputs,
        device=device,
        cuts=np.asarray(cuts, dtype=np.int64),
        thresholds=np.asarray(thresholds, dtype=np.float64),
        exit_fractions=fractions,
        latency_s=costs.latency_s,
        energy_j=costs.energy_j,
        local_fraction=costs.local_fraction,
        send_s=costs.send_s,
        accuracy=np.array([p.accuracy for p in points], dtype=np.float64),
        usable=usable,
        objective=objective,
        latency_ref_s=latency_ref,
        energy_ref_j=energy_ref,
        weight=weight,
        forced=forced,
    )
