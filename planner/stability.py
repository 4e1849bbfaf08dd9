"""Hysteresis: keep a device's previous cut unless moving clearly pays.

Re-solving every round on fresh, noisy telemetry would flip cuts on near-ties, and every flip moves
the weights of the blocks between the two cuts across the device's link. :func:`stabilise` starts
from the previous cuts and accepts the candidate's changes one device at a time, best first, while

    gain > move cost + margin * stake

all in objective units (J, see :mod:`planner.objective`), with the other devices where they stand:

- gain: J with the device on its previous cut minus J with it on the candidate's cut.
- move cost: the blocks between the cuts, ``sum(param_bytes[min(p, c):max(p, c)])`` bytes, travel
  once over the device's link: down (B') when it takes blocks on, up (B) when it hands them off, or
  at ``move_s_per_byte`` when given. Their time t and energy P * t enter J as
  alpha * t / T_ref + (1 - alpha) * w * P * t / E_ref; counting t against the round time assumes the
  worst, that the mover is the slowest device. The cost is set against one round's gain, which
  keeps moves for changes large enough to pay back at once.
- stake: what of J depends on this device: its weighted energy at both cuts, plus the max-time
  term at both cuts when either cut's time comes within ``2 * margin`` of the others' max (otherwise
  the device cannot move the max). Why relative to the stake: a relative error of delta in every
  time and energy changes a gain by at most about 2 * delta * stake, so a previously optimal cut
  cannot be flipped by noise up to about margin / 2 (2.5 % at the default), for one device among a
  thousand as much as for one among five.

A single device cannot lower a max that several devices share, so after the greedy pass the
remaining changes are also tried together, with the whole plan's J at both ends as the stake.
Devices under the battery rule, new devices and devices whose previous cut is no longer feasible
take the candidate's cut as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from planner.cost import CostTable
from planner.errors import PlanningError
from planner.objective import Objective, build_objective
from planner.plan import Plan, build_plan

__all__ = ["stabilise"]

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class _Pending:
    """Devices whose previous cut differs from the candidate's, still on the previous one."""

    rows: IntArray
    previous: IntArray  # column of the previous cut
    target: IntArray  # column of the candidate's cut
    move_cost: FloatArray  # objective units


def stabilise(
    previous: Mapping[str, int | None] | None,
    candidate: Plan,
    table: CostTable,
    alpha: float,
    *,
    margin: float = 0.05,
    move_s_per_byte: float | None = None,
) -> Plan:
    """The candidate plan, with changes that do not pay for themselves held back.

    ``previous`` maps device ids to last round's cuts (None or absent: no usable previous cut);
    ``candidate`` is :func:`planner.solve`'s plan for ``table`` with the same ``alpha``.
    """
    if not math.isfinite(margin) or margin < 0.0:
        raise PlanningError("margin", f"must be finite and >= 0, got {margin!r}")
    if move_s_per_byte is not None and (not math.isfinite(move_s_per_byte) or move_s_per_byte < 0):
        raise PlanningError("move_s_per_byte", f"must be finite and >= 0, got {move_s_per_byte!r}")
    if alpha != candidate.alpha:
        raise PlanningError("alpha", f"{alpha!r} differs from the candidate's {candidate.alpha!r}")
    objective = build_objective(
        table,
        alpha,
        battery_floor=candidate.battery_floor,
        low_battery=candidate.low_battery,
        normalisation=candidate.normalisation,
    )
    target = _candidate_index(candidate, table)
    if previous is None:
        return candidate
    current = target.copy()
    reasons = dict(candidate.reasons)
    rows: list[int] = []
    for row, device_id in enumerate(table.device_ids):
        if objective.modes[row] != "free":
            continue  # the battery rule outranks hysteresis
        cut = previous.get(device_id)
        column = int(target[row])
        if cut is None:
            reasons[device_id] = f"no previous cut: takes the candidate's ({reasons[device_id]})"
        elif not 1 <= cut <= table.num_cuts or not np.isfinite(table.time_s[row, cut - 1]):
            reasons[device_id] = (
                f"previous cut {cut} is no longer feasible: takes the candidate's "
                f"({reasons[device_id]})"
            )
        elif cut - 1 == column:
            reasons[device_id] = f"keeps cut {cut}, as the candidate does ({reasons[device_id]})"
        else:
            current[row] = cut - 1
            rows.append(row)
    if rows:
        row_array = np.array(rows, dtype=np.int64)
        pending = _Pending(
            rows=row_array,
            previous=current[row_array].copy(),
            target=target[row_array].copy(),
            move_cost=_move_cost(
                objective, row_array, current[row_array], target[row_array], move_s_per_byte
            ),
        )
        _greedy(objective, current, pending, margin, reasons)
    return build_plan(objective, current, [reasons[d] for d in table.device_ids])


def _candidate_index(candidate: Plan, table: CostTable) -> IntArray:
    if {a.device_id for a in candidate.assignments} != set(table.device_ids):
        raise PlanningError("candidate", "covers different devices than the table")
    index = np.full(table.num_devices, -1, dtype=np.int64)
    for assignment in candidate.assignments:
        if assignment.cut is not None:
            index[table.row(assignment.device_id)] = assignment.cut - 1
    return index


def _move_cost(
    objective: Objective,
    rows: IntArray,
    previous: IntArray,
    target: IntArray,
    move_s_per_byte: float | None,
) -> FloatArray:
    """Objective units for moving the blocks between each device's two cuts, once."""
    table = objective.table
    offsets = np.concatenate([[0.0], np.cumsum(np.asarray(table.param_bytes, dtype=np.float64))])
    # Cut s keeps blocks [0, s): going from column p to c moves blocks [min, max) of the two cuts.
    low = np.minimum(previous, target) + 1
    high = np.maximum(previous, target) + 1
    moved_bytes = offsets[high] - offsets[low]
    taking_on = target > previous
    if move_s_per_byte is None:
        rate = np.where(taking_on, table.downlink_bps[rows], table.uplink_bps[rows])
        seconds = moved_bytes * 8.0 / rate
    else:
        seconds = moved_bytes * move_s_per_byte
    power = np.where(taking_on, table.power_rx_w[rows], table.power_tx_w[rows])
    cost: FloatArray = objective.combine_array(seconds, objective.weights[rows] * power * seconds)
    return cost


def _greedy(
    objective: Objective,
    current: IntArray,
    pending: _Pending,
    margin: float,
    reasons: dict[str, str],
) -> None:
    """Accept single moves best first while they pay; then try the rest as a group. In place."""
    table = objective.table
    norm = objective.normalisation
    alpha = objective.alpha
    open_ = np.ones(pending.rows.size, dtype=bool)
    all_rows = np.arange(table.num_devices)
    while open_.any():
        times = np.where(current >= 0, table.time_s[all_rows, np.maximum(current, 0)], -np.inf)
        others = _max_of_others(times)
        rows = pending.rows
        t_prev = table.time_s[rows, pending.previous]
        t_next = table.time_s[rows, pending.target]
        e_prev = objective.weights[rows] * table.energy_j[rows, pending.previous]
        e_next = objective.weights[rows] * table.energy_j[rows, pending.target]
        m = np.maximum(others[rows], 0.0)
        a_prev, a_next = np.maximum(t_prev, m), np.maximum(t_next, m)
        gain = (
            alpha * (a_prev - a_next) / norm.time_s
            + (1 - alpha) * (e_prev - e_next) / norm.energy_j
        )
        near_max = np.maximum(t_prev, t_next) >= (1.0 - 2.0 * margin) * m
        stake = np.where(near_max, alpha * (a_prev + a_next) / norm.time_s, 0.0)
        stake += (1 - alpha) * (e_prev + e_next) / norm.energy_j
        hurdle = pending.move_cost + margin * stake
        net = np.where(open_, gain - hurdle, -np.inf)
        best = int(np.argmax(net))
        if net[best] <= 0.0:
            for k in np.flatnonzero(open_):
                reasons[table.device_ids[rows[k]]] = (
                    f"keeps cut {pending.previous[k] + 1} over the candidate's "
                    f"{pending.target[k] + 1}: "
                    f"gain {gain[k]:.3g} <= move cost {pending.move_cost[k]:.3g} + margin "
                    f"{margin * stake[k]:.3g} (objective units)"
                )
            break
        current[rows[best]] = pending.target[best]
        open_[best] = False
        reasons[table.device_ids[rows[best]]] = (
            f"moves from cut {pending.previous[best] + 1} to {pending.target[best] + 1}: "
            f"gain {gain[best]:.3g} > move cost {pending.move_cost[best]:.3g} + margin "
            f"{margin * stake[best]:.3g} (objective units)"
        )
    _group(objective, current, pending, open_, margin, reasons)


def _group(
    objective: Objective,
    current: IntArray,
    pending: _Pending,
    open_: NDArray[np.bool_],
    margin: float,
    reasons: dict[str, str],
) -> None:
    """Move all still-pending devices together if that pays (a shared max needs them all)."""
    if open_.sum() < 2:
        return
    rows = pending.rows[open_]
    moved = current.copy()
    moved[rows] = pending.target[open_]
    before, after = objective.value(current), objective.value(moved)
    cost = float(pending.move_cost[open_].sum())
    hurdle = cost + margin * (before + after)
    if before - after <= hurdle:
        return
    current[rows] = pending.target[open_]
    for k in np.flatnonzero(open_):
        reasons[objective.table.device_ids[pending.rows[k]]] = (
            f"moves from cut {pending.previous[k] + 1} to {pending.target[k] + 1} with "
            f"{rows.size - 1} other devices: joint gain {before - after:.3g} > move cost "
            f"{cost:.3g} + margin {margin * (before + after):.3g} (objective units)"
        )


def _max_of_others(times: FloatArray) -> FloatArray:
    """For each device, the largest time among the other devices (-inf when alone)."""
    if times.size < 2:
        return np.full(times.size, -np.inf)
    top_two = np.partition(times, times.size - 2)[-2:]
    second, first = float(top_two[0]), float(top_two[1])
    leader = int(np.argmax(times))
    others = np.full(times.size, first)
    others[leader] = second
    return others
