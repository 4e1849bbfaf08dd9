"""The serving solver: per device, the setting (cut, threshold) of least objective that meets the
accuracy floor (see :mod:`planner.inference.options` for the objective and the rule).

Devices are independent (each answers its own requests), so the optimum is per device: all
``(L + 1) x thresholds`` settings are priced at once with numpy and the rule picks one. Exact by
construction; :func:`brute_force` re-derives it one setting at a time from the scalar definition
(:func:`planner.inference.cost.request_cost`) for the property test.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from planner.errors import PlanningError
from planner.inference.cost import RequestCost, request_cost
from planner.inference.options import (
    ACCURACY_TOLERANCE,
    DeviceOptions,
    price_device,
    reference_costs,
)
from planner.inference.plan import Degraded, InferencePlan, ServingAssignment, Setting
from planner.inference.points import OperatingPoint, corrected_fraction, exit_ratio
from planner.inference.problem import ServingInputs
from planner.inference.reasons import describe, explain
from planner.objective import energy_weight

__all__ = ["assemble", "brute_force", "choose", "plan_for_settings", "solve"]


def solve(inputs: ServingInputs) -> InferencePlan:
    """Every device's best setting, each with the reason for it."""
    return assemble(inputs, [choose(price_device(inputs, d)) for d in inputs.devices])


def choose(options: DeviceOptions) -> ServingAssignment:
    """The rule's pick among one device's options, explained against the best at another cut."""
    pool, met = options.pool()
    k = options.best(pool)
    reason = explain(options, k, accuracy_met=met, runner_up=runner_up(options, pool, k))
    return options.assignment(k, reason, accuracy_met=met)


def runner_up(options: DeviceOptions, pool: NDArray[np.bool_], k: int) -> int | None:
    """The best competing option at another cut, else at another threshold, else None."""
    other_cut = pool & (options.cuts != options.cuts[k])
    if other_cut.any():
        return options.best(other_cut)
    other = pool.copy()
    other[k] = False
    return options.best(other) if other.any() else None


def plan_for_settings(
    inputs: ServingInputs, settings: Mapping[str, Setting] | Setting, *, reason: str
) -> InferencePlan:
    """The plan for settings chosen elsewhere (one for all, or per device), priced by the same
    cost model. A setting the table lacks, or one a device may not take (allowed cuts, memory),
    raises :class:`PlanningError` naming the device."""
    assignments = []
    for device in inputs.devices:
        if isinstance(settings, tuple):
            setting = settings
        elif device.device_id in settings:
            setting = settings[device.device_id]
        else:
            raise PlanningError(device.device_id, "has no setting")
        options = price_device(inputs, device)
        k = options.index(setting)
        cut, threshold = setting
        if k is None:
            missing = f"the exit table has no point for cut {cut}, threshold {threshold}"
            raise PlanningError(device.device_id, missing)
        if not options.usable[k]:
            raise PlanningError(
                device.device_id, f"cut {cut} is not allowed or does not fit its memory"
            )
        met = bool(options.accurate[k])
        line = f"{reason}: {describe(options, k)}"
        assignments.append(options.assignment(k, line, accuracy_met=met))
    return assemble(inputs, assignments)


def assemble(inputs: ServingInputs, assignments: list[ServingAssignment]) -> InferencePlan:
    return InferencePlan(
        assignments=tuple(assignments),
        alpha=float(inputs.alpha),
        accuracy_floor=float(inputs.accuracy_floor),
        full_accuracy=inputs.exits.full_accuracy,
        battery_floor=inputs.battery_floor,
    )


class _Row(NamedTuple):
    point: OperatingPoint
    fractions: dict[int, float]
    cost: RequestCost
    objective: float


def _rank(row: _Row, forced: bool) -> tuple[float, ...]:
    tail = (-row.point.accuracy, float(row.point.cut), row.point.threshold)
    if forced:
        return (row.cost.energy_j, row.cost.latency_s, *tail)
    return (row.objective, *tail)


def brute_force(inputs: ServingInputs) -> InferencePlan:
    """The same optimum one setting at a time from the scalar cost definition (for tests)."""
    model, edge, exits = inputs.model, inputs.edge, inputs.exits
    assignments = []
    for device in inputs.devices:
        ratio = exit_ratio(exits, device.observed, inputs.correction)
        latency_ref, energy_ref = reference_costs(inputs, device)
        weight = energy_weight(device.battery_fraction, inputs.battery_floor)
        battery = device.battery_fraction
        forced = battery is not None and battery < inputs.battery_floor
        rows: list[_Row] = []
        for point in exits.points:
            if device.allowed_cuts is not None and point.cut not in device.allowed_cuts:
                continue
            need = model.memory_needed_bytes(point.cut, point.exits)
            if device.memory_bytes is not None and need > device.memory_bytes:
                continue
            fractions = corrected_fraction(point, ratio)
            cost = request_cost(device, edge, model, point.cut, point.threshold, fractions)
            objective = (
                inputs.alpha * cost.latency_s / latency_ref
                + (1 - inputs.alpha) * weight * cost.energy_j / energy_ref
            )
            rows.append(_Row(point, fractions, cost, objective))
        if not rows:
            raise PlanningError(device.device_id, "no cut is allowed and fits its memory")
        bound = inputs.accuracy_bound - ACCURACY_TOLERANCE
        pool = [row for row in rows if row.point.accuracy >= bound]
        met = bool(pool)
        if not met:
            best = max(row.point.accuracy for row in rows)
            pool = [row for row in rows if row.point.accuracy >= best - ACCURACY_TOLERANCE]

        point, fractions, cost, objective = min(pool, key=lambda row: _rank(row, forced))
        position, accuracy = exits.deepest_exit(point.cut)
        assignments.append(
            ServingAssignment(
                device_id=device.device_id,
                cut=point.cut,
                threshold=point.threshold,
                latency_s=cost.latency_s,
                energy_j=cost.energy_j,
                accuracy=point.accuracy,
                local_fraction=cost.local_fraction,
                objective=objective,
                reason="brute force",
                degraded=Degraded(position, accuracy),
                exit_fraction=fractions,
                accuracy_met=met,
                forced=forced,
                latency_ref_s=latency_ref,
                energy_ref_j=energy_ref,
            )
        )
    return assemble(inputs, assignments)
