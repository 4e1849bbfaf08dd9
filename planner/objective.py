"""The planning objective: one number that trades the round's time against the devices' energy.

For cuts s(phi) chosen for the participating devices:

    J = alpha * max_phi Delta(phi) / T_ref  +  (1 - alpha) * sum_phi w(phi) * E(phi) / E_ref

Normalisation (T_ref, E_ref). Seconds and joules are made comparable by dividing each term by its
value under a reference policy, so that J = 1 for the reference itself at every alpha (mains power)
and alpha reads as "the share of attention given to time". The reference is the all-on-device plan
(federated learning, cut L) over the participating devices: T_ref = its max time, E_ref = its total
(unweighted) energy. Why FL: it needs no server and no link, so it exists for every device and is
the paper's baseline. If cut L is infeasible for some device (memory, allowed cuts), the reference
falls back to the deepest single cut all participants can use, and if there is none, to every
device's own deepest feasible cut: the plan closest to FL. The fallback is picked by feasibility,
never by cost, on purpose: picking the cheapest common cut would make the scale jump whenever noise
reorders two near-equal cuts, and a jumping scale reshuffles plans that hysteresis is meant to keep.
A reference term that is 0 is replaced by 1 (the term is then measured in raw seconds or joules).
Callers comparing plans across rounds can pass their own :class:`Normalisation` to keep J on one
scale.

Battery. A battery-powered device's energy counts w = 1 / max(battery_fraction, battery_floor) times
(w = 1 for mains power): a full battery weighs 1, half a battery 2, a battery at the floor 1 / floor
(6.7 at the default 0.15). Why inverse charge: a joule drawn from the last part of a battery costs
more device lifetime than one drawn from a full one, and the weight rises smoothly with no new
parameter. E_ref stays unweighted, so when all batteries are low energy gains weight against time
overall, not only among devices. Below the floor the device gets no choice: with
``low_battery="least_energy"`` it is forced onto its least-energy feasible cut (it still trains and
still counts in the max and the sum); with ``"sit_out"`` it skips the round and counts in neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from planner.cost import CostTable
from planner.errors import PlanningError

__all__ = [
    "DEFAULT_BATTERY_FLOOR",
    "DeviceMode",
    "LowBatteryPolicy",
    "Normalisation",
    "Objective",
    "build_objective",
    "energy_weight",
    "least_energy_columns",
]

LowBatteryPolicy = Literal["least_energy", "sit_out"]
DeviceMode = Literal["free", "forced", "sit_out"]
DEFAULT_BATTERY_FLOOR = 0.15

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Normalisation:
    """Scales that make the two objective terms dimensionless: seconds and joules."""

    time_s: float
    energy_j: float

    def __post_init__(self) -> None:
        for name in ("time_s", "energy_j"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0.0:
                raise PlanningError(name, f"must be finite and > 0, got {value!r}")

    @classmethod
    def reference(
        cls, table: CostTable, participants: NDArray[np.bool_] | None = None
    ) -> Normalisation:
        """The reference-policy scales described in the module docstring."""
        rows = np.ones(table.num_devices, dtype=bool) if participants is None else participants
        if not rows.any():
            return cls(1.0, 1.0)
        time = table.time_s[rows]
        energy = table.energy_j[rows]
        feasible = np.isfinite(time)
        if feasible[:, -1].all():
            max_time, total_energy = float(time[:, -1].max()), float(energy[:, -1].sum())
        elif (common := feasible.all(axis=0)).any():
            deepest = int(np.flatnonzero(common)[-1])
            max_time, total_energy = float(time[:, deepest].max()), float(energy[:, deepest].sum())
        else:
            # Row-wise deepest feasible column: the last True of each row.
            deepest_each = feasible.shape[1] - 1 - np.argmax(feasible[:, ::-1], axis=1)
            picked = np.arange(time.shape[0])
            max_time = float(time[picked, deepest_each].max())
            total_energy = float(energy[picked, deepest_each].sum())
        return cls(max_time if max_time > 0 else 1.0, total_energy if total_energy > 0 else 1.0)


def energy_weight(battery_fraction: float | None, battery_floor: float) -> float:
    """w = 1 / max(battery, floor) for a battery, 1 for mains power."""
    if battery_fraction is None:
        return 1.0
    return 1.0 / max(battery_fraction, battery_floor)


def least_energy_columns(
    time: FloatArray, energy: FloatArray, bound: float = math.inf
) -> NDArray[np.int64]:
    """Per row, the column of least energy among times <= bound (all feasible cells by default).

    Ties go to lower time, then lower cut, so that equal plans always resolve the same way.
    """
    allowed = time <= bound
    masked = np.where(allowed, energy, np.inf)
    chosen = allowed & (masked == masked.min(axis=1, keepdims=True))
    tied_time = np.where(chosen, time, np.inf)
    chosen &= tied_time == tied_time.min(axis=1, keepdims=True)
    first: NDArray[np.int64] = np.argmax(chosen, axis=1).astype(np.int64)  # first True: lower cut
    return first


@dataclass(frozen=True, slots=True, eq=False)
class Objective:
    """J for one table, alpha and battery rule; see the module docstring.

    ``modes[d]``: "free" (the solver picks), "forced" (least-energy cut) or "sit_out".
    ``weights[d]``: the battery weight w applied to device d's energy.
    """

    table: CostTable
    alpha: float
    normalisation: Normalisation
    battery_floor: float
    low_battery: LowBatteryPolicy
    weights: FloatArray
    modes: tuple[DeviceMode, ...]

    @property
    def participants(self) -> NDArray[np.bool_]:
        return np.array([mode != "sit_out" for mode in self.modes], dtype=bool)

    def value(self, cut_index: IntArray) -> float:
        """J for column indices per device (``cut - 1``; -1 for a device that sits out).

        +inf if any participating device is on an infeasible cut.
        """
        rows = np.flatnonzero(cut_index >= 0)
        if rows.size == 0:
            return 0.0
        columns = cut_index[rows]
        time = self.table.time_s[rows, columns]
        energy = self.table.energy_j[rows, columns]
        if not (np.isfinite(time).all() and np.isfinite(energy).all()):
            return math.inf
        return self.combine(float(time.max()), float((self.weights[rows] * energy).sum()))

    def combine_array(self, max_time_s: FloatArray, weighted_energy_j: FloatArray) -> FloatArray:
        """:meth:`combine` over arrays of candidate plans."""
        norm = self.normalisation
        result: FloatArray = (
            self.alpha * max_time_s / norm.time_s
            + (1.0 - self.alpha) * weighted_energy_j / norm.energy_j
        )
        return result

    def combine(self, max_time_s: float, weighted_energy_j: float) -> float:
        """alpha * max time / T_ref + (1 - alpha) * weighted energy / E_ref."""
        norm = self.normalisation
        return (
            self.alpha * max_time_s / norm.time_s
            + (1.0 - self.alpha) * weighted_energy_j / norm.energy_j
        )


def build_objective(
    table: CostTable,
    alpha: float,
    *,
    battery_floor: float = DEFAULT_BATTERY_FLOOR,
    low_battery: LowBatteryPolicy = "least_energy",
    normalisation: Normalisation | None = None,
) -> Objective:
    """Resolve the battery rule and the normalisation for ``table`` into an :class:`Objective`."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= alpha <= 1.0:
        raise PlanningError("alpha", f"must lie in [0, 1], got {alpha!r}")
    # The floor also clamps the weight: it must be > 0 or an empty battery would weigh infinitely.
    if not 0.0 < battery_floor <= 1.0:
        raise PlanningError("battery_floor", f"must lie in (0, 1], got {battery_floor!r}")
    if low_battery not in ("least_energy", "sit_out"):
        raise PlanningError(
            "low_battery", f"must be 'least_energy' or 'sit_out', got {low_battery!r}"
        )
    modes: list[DeviceMode] = []
    for battery in table.battery_fraction:
        if battery is not None and battery < battery_floor:
            modes.append("forced" if low_battery == "least_energy" else "sit_out")
        else:
            modes.append("free")
    weights = np.array(
        [energy_weight(b, battery_floor) for b in table.battery_fraction], dtype=np.float64
    )
    weights.setflags(write=False)
    participants = np.array([mode != "sit_out" for mode in modes], dtype=bool)
    return Objective(
        table=table,
        alpha=float(alpha),
        normalisation=normalisation or Normalisation.reference(table, participants),
        battery_floor=float(battery_floor),
        low_battery=low_battery,
        weights=weights,
        modes=tuple(modes),
    )
