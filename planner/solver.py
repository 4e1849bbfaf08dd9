"""Exact split planning in O(N L log(N L)) for N devices and L cuts.

Why a threshold sweep is exact. The objective (see :mod:`planner.objective`)

    J(s) = alpha * max_phi Delta(phi, s_phi) / T_ref
           + (1 - alpha) * sum_phi w_phi E(phi, s_phi) / E_ref

couples the devices only through the max. Fix a bound T on the round time: the best plan whose max
is at most T lets every device independently take its least (weighted) energy cut with Delta <= T,
and its J is at most g(T) = alpha * T / T_ref + (1 - alpha) * sum_phi min{w E : Delta <= T} / E_ref.
The optimal plan's own max is one of the table's times, and at that T the bound is tight, so the
optimum is min over the finite times T of g(T). Forced (low-battery) devices add a constant energy
and a floor T_f under the max: g(T) uses max(T, T_f).

Sweeping T upwards, a device's best energy only changes when one of its cells becomes allowed, so
sorting each row by time and taking a running minimum gives every device's best energy at each of
its cells; one global sort of the N L cells and a cumulative sum of the changes then give g at every
threshold. Ties among equally good thresholds go to the smallest T (shorter rounds for free), and
a device's ties to lower time, then lower cut.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

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
    least_energy_columns,
)
from planner.plan import Plan, build_plan

__all__ = ["brute_force", "solve"]

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]

# brute_force enumerates every combination; beyond this it is a mistake, not a test.
_BRUTE_FORCE_LIMIT = 5_000_000
_CHUNK = 1 << 15


def solve(
    table: CostTable,
    alpha: float,
    *,
    battery_floor: float = DEFAULT_BATTERY_FLOOR,
    low_battery: LowBatteryPolicy = "least_energy",
    normalisation: Normalisation | None = None,
) -> Plan:
    """The plan minimising J over all combinations of cuts (see the module docstring)."""
    objective = build_objective(
        table,
        alpha,
        battery_floor=battery_floor,
        low_battery=low_battery,
        normalisation=normalisation,
    )
    index = _fixed_index(objective)
    free = np.array([mode == "free" for mode in objective.modes], dtype=bool)
    threshold: float | None = None
    if free.any():
        time = table.time_s[free]
        weighted = table.energy_j[free] * objective.weights[free, None]
        forced_time, forced_energy = _fixed_costs(objective, index)
        threshold = _best_threshold(objective, time, weighted, forced_time, forced_energy)
        index[free] = least_energy_columns(time, weighted, threshold)
    return build_plan(objective, index, _reasons(objective, index, threshold))


def brute_force(
    table: CostTable,
    alpha: float,
    *,
    battery_floor: float = DEFAULT_BATTERY_FLOOR,
    low_battery: LowBatteryPolicy = "least_energy",
    normalisation: Normalisation | None = None,
) -> Plan:
    """Reference solver for tests: tries every combination of feasible cuts (itertools.product)."""
    objective = build_objective(
        table,
        alpha,
        battery_floor=battery_floor,
        low_battery=low_battery,
        normalisation=normalisation,
    )
    index = _fixed_index(objective)
    free_rows = np.array(
        [r for r, mode in enumerate(objective.modes) if mode == "free"], dtype=np.int64
    )
    options = [np.flatnonzero(np.isfinite(table.time_s[row])) for row in free_rows]
    if math.prod(len(o) for o in options) > _BRUTE_FORCE_LIMIT:
        raise PlanningError("table", "too many combinations for brute force")
    if free_rows.size:
        forced_time, forced_energy = _fixed_costs(objective, index)
        time = table.time_s[free_rows]
        weighted = table.energy_j[free_rows] * objective.weights[free_rows, None]
        picked = np.arange(free_rows.size)
        best_value, best_combo = math.inf, options[0][:0]
        combos = itertools.product(*(o.tolist() for o in options))
        while chunk := list(itertools.islice(combos, _CHUNK)):
            columns = np.array(chunk, dtype=np.int64)
            max_time = np.maximum(time[picked, columns].max(axis=1), forced_time)
            energy = weighted[picked, columns].sum(axis=1) + forced_energy
            values = objective.combine_array(max_time, energy)
            best = int(np.argmin(values))
            if values[best] < best_value:
                best_value, best_combo = float(values[best]), columns[best]
        index[free_rows] = best_combo
    reasons = [
        _fixed_reason(objective, row) or "best by exhaustive search" for row in range(len(index))
    ]
    return build_plan(objective, index, reasons)


def _fixed_index(objective: Objective) -> IntArray:
    """Column per device for the battery rule (-1 = sits out, least-energy cut if forced)."""
    table = objective.table
    index = np.full(table.num_devices, -1, dtype=np.int64)
    forced = np.array([mode == "forced" for mode in objective.modes], dtype=bool)
    if forced.any():
        index[forced] = least_energy_columns(table.time_s[forced], table.energy_j[forced])
    return index


def _fixed_costs(objective: Objective, index: IntArray) -> tuple[float, float]:
    """Max time and weighted energy of the forced devices: a floor under T and a constant."""
    rows = np.array(
        [r for r, mode in enumerate(objective.modes) if mode == "forced"], dtype=np.int64
    )
    if rows.size == 0:
        return 0.0, 0.0
    columns = index[rows]
    time = objective.table.time_s[rows, columns]
    energy = objective.table.energy_j[rows, columns] * objective.weights[rows]
    return float(time.max()), float(energy.sum())


def _best_threshold(
    objective: Objective,
    time: FloatArray,
    weighted: FloatArray,
    forced_time: float,
    forced_energy: float,
) -> float:
    """The bound T minimising g(T); see the module docstring."""
    devices = time.shape[0]
    # No stable sort needed: g is only read after the last of equal times, when order no longer
    # matters, and the cut itself is picked afterwards by least_energy_columns.
    order = np.argsort(time, axis=1)
    row_time = np.take_along_axis(time, order, axis=1)
    row_energy = np.take_along_axis(weighted, order, axis=1)
    best = np.minimum.accumulate(row_energy, axis=1)
    # The first cell makes the device available with its energy; later cells can only lower it.
    change = np.empty_like(best)
    change[:, 0] = best[:, 0]
    change[:, 1:] = best[:, 1:] - best[:, :-1]
    arrives = np.zeros(best.shape, dtype=np.int64)
    arrives[:, 0] = 1
    feasible = np.isfinite(row_time)
    event_time = row_time[feasible]
    sweep = np.argsort(event_time)
    thresholds = event_time[sweep]
    energy_sum = np.cumsum(change[feasible][sweep])
    available = np.cumsum(arrives[feasible][sweep])
    # g is only defined once every device has a cell, and only at the last of equal times.
    last = np.append(thresholds[1:] != thresholds[:-1], True)
    candidates = np.flatnonzero(last & (available == devices))
    values = objective.combine_array(
        np.maximum(thresholds[candidates], forced_time), energy_sum[candidates] + forced_energy
    )
    # The cumulative sum carries rounding of order (events * eps * magnitude); thresholds whose g is
    # equal up to that noise are ties, and ties go to the smallest T.
    magnitude = objective.combine(
        max(float(thresholds[-1]), forced_time),
        float(np.where(feasible, row_energy, 0.0).max(axis=1).sum()) + forced_energy,
    )
    tolerance = 4.0 * thresholds.size * np.finfo(np.float64).eps * magnitude
    pick = int(np.flatnonzero(values <= values.min() + tolerance)[0])
    return float(thresholds[candidates[pick]])


def _fixed_reason(objective: Objective, row: int) -> str | None:
    mode = objective.modes[row]
    if mode == "free":
        return None
    battery = objective.table.battery_fraction[row]
    below = f"battery {battery:.0%} below the floor {objective.battery_floor:.0%}"
    if mode == "forced":
        return f"{below}: forced onto its least-energy cut"
    return f"{below}: sits the round out"


def _reasons(objective: Objective, index: IntArray, threshold: float | None) -> Sequence[str]:
    table = objective.table
    rows = np.flatnonzero(index >= 0)
    times = np.where(index >= 0, table.time_s[np.arange(table.num_devices), index], 0.0)
    round_time = float(times[rows].max()) if rows.size else 0.0
    cheapest = least_energy_columns(table.time_s, table.energy_j).tolist()
    options = np.isfinite(table.time_s).sum(axis=1).tolist()
    sets_time = (times == round_time).tolist() if objective.alpha > 0.0 else [False] * len(times)
    reasons: list[str] = []
    for row, column in enumerate(index.tolist()):
        fixed = _fixed_reason(objective, row)
        if fixed is not None:
            reasons.append(fixed)
            continue
        if options[row] == 1:
            reason = "its only feasible cut"
        elif column == cheapest[row]:
            reason = "its least-energy cut"
        else:
            reason = f"least-energy cut within the optimal round-time bound {threshold:.4g} s"
        if sets_time[row]:
            reason += "; sets the round time"
        reasons.append(reason)
    return reasons
