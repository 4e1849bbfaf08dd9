"""The planner's output: a cut per device with its predicted cost and the reason for it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from planner.cost import CostTable
from planner.errors import PlanningError
from planner.objective import (
    DEFAULT_BATTERY_FLOOR,
    LowBatteryPolicy,
    Normalisation,
    Objective,
    build_objective,
)

__all__ = ["Assignment", "Plan", "build_plan", "plan_for_cuts"]


@dataclass(frozen=True, slots=True)
class Assignment:
    """One device's part of a plan. ``cut`` is None when the device sits the round out."""

    device_id: str
    cut: int | None
    time_s: float
    energy_j: float
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """A split plan: per device cut, predicted round time and energy, and why.

    ``objective`` is J (see :mod:`planner.objective`), ``max_time_s`` the predicted round time,
    ``total_energy_j`` the devices' total energy in joules (unweighted). ``alpha``,
    ``normalisation``, ``battery_floor`` and ``low_battery`` record the objective the plan was
    made for, so that :func:`planner.stabilise` can weigh changes on the same scale.
    ``formats``: the wire format chosen for each participating device, where the planner chose
    formats too (:mod:`planner.wire_choice`); empty: each device keeps its configured one.
    """

    assignments: tuple[Assignment, ...]
    objective: float
    max_time_s: float
    total_energy_j: float
    alpha: float
    normalisation: Normalisation
    battery_floor: float
    low_battery: LowBatteryPolicy
    formats: Mapping[str, str] = field(default_factory=dict)

    @property
    def cuts(self) -> Mapping[str, int]:
        """Cut per participating device."""
        return {a.device_id: a.cut for a in self.assignments if a.cut is not None}

    @property
    def time_s(self) -> Mapping[str, float]:
        return {a.device_id: a.time_s for a in self.assignments if a.cut is not None}

    @property
    def energy_j(self) -> Mapping[str, float]:
        return {a.device_id: a.energy_j for a in self.assignments if a.cut is not None}

    @property
    def reasons(self) -> Mapping[str, str]:
        """Why each device (sitting out or not) got its cut."""
        return {a.device_id: a.reason for a in self.assignments}

    @property
    def sitting_out(self) -> frozenset[str]:
        return frozenset(a.device_id for a in self.assignments if a.cut is None)

    def assignment(self, device_id: str) -> Assignment:
        for item in self.assignments:
            if item.device_id == device_id:
                return item
        raise PlanningError(device_id, "is not in the plan")


def build_plan(objective: Objective, cut_index: NDArray[np.int64], reasons: Sequence[str]) -> Plan:
    """Assemble a :class:`Plan` from column indices (``cut - 1``, -1 = sits out)."""
    table = objective.table
    columns = np.asarray(cut_index, dtype=np.int64)
    participating = columns >= 0
    picked = np.maximum(columns, 0)  # placeholder column for devices sitting out, masked below
    every = np.arange(table.num_devices)
    time = np.where(participating, table.time_s[every, picked], 0.0)
    energy = np.where(participating, table.energy_j[every, picked], 0.0)
    bad = np.flatnonzero(~np.isfinite(time))
    if bad.size:
        row = int(bad[0])
        raise PlanningError(table.device_ids[row], f"cut {columns[row] + 1} is infeasible")
    assignments = tuple(
        Assignment(device_id, column + 1 if column >= 0 else None, t, e, reason)
        for device_id, column, t, e, reason in zip(
            table.device_ids, columns.tolist(), time.tolist(), energy.tolist(), reasons, strict=True
        )
    )
    times = time[participating]
    return Plan(
        assignments=assignments,
        objective=objective.value(columns),
        max_time_s=float(times.max()) if times.size else 0.0,
        total_energy_j=float(energy[participating].sum()),
        alpha=objective.alpha,
        normalisation=objective.normalisation,
        battery_floor=objective.battery_floor,
        low_battery=objective.low_battery,
    )


def plan_for_cuts(
    table: CostTable,
    alpha: float,
    cuts: Mapping[str, int | None] | int,
    *,
    battery_floor: float = DEFAULT_BATTERY_FLOOR,
    low_battery: LowBatteryPolicy = "least_energy",
    normalisation: Normalisation | None = None,
    reason: str = "cut given by the caller",
) -> Plan:
    """The plan for cuts chosen elsewhere, priced with the same objective as :func:`planner.solve`.

    ``cuts`` is one cut for every device (e.g. ``table.num_cuts`` for federated learning) or a
    mapping; devices missing from the mapping, or mapped to None, sit out. The battery rule only
    shapes the weights and the reference here: the given cuts are taken as they are. A cut outside
    ``1..L`` or infeasible for its device raises :class:`PlanningError` naming the device.
    """
    objective = build_objective(
        table,
        alpha,
        battery_floor=battery_floor,
        low_battery=low_battery,
        normalisation=normalisation,
    )
    index = np.full(table.num_devices, -1, dtype=np.int64)
    for row, device_id in enumerate(table.device_ids):
        cut = cuts if isinstance(cuts, int) else cuts.get(device_id)
        if cut is None:
            continue
        if not 1 <= cut <= table.num_cuts:
            raise PlanningError(device_id, f"cut {cut} is outside 1..{table.num_cuts}")
        index[row] = cut - 1
    if not isinstance(cuts, int):
        unknown = sorted(set(cuts) - set(table.device_ids))
        if unknown:
            raise PlanningError("cuts", f"unknown devices {unknown}")
    reasons = [
        reason if index[row] >= 0 else "not given a cut: sits out" for row in range(len(index))
    ]
    return build_plan(objective, index, reasons)
