"""Hysteresis for serving plans: a device keeps its setting in force unless the new best setting's
objective is lower by more than ``margin`` (default 5%) of the kept one's.

Both are priced on the same, current readings, so the comparison is on one scale. Why a relative
margin: a relative error of delta in the latency and energy readings moves an objective by about
delta of itself, so noise up to the margin cannot make a device flap between two near-equal
settings, while a real change (a link that drops from 20 to 2 Mbit/s moves the objective by
multiples) passes at the first re-plan. Unlike training there is no move cost to add: the device
holds the whole model's device-side blocks and exits, and a new setting moves no weights.

The setting in force is dropped, whatever the margin, when it no longer competes (its cut is no
longer allowed or no longer fits, the table lost it, or it fell below the accuracy floor while
another setting meets it), and for a device under the battery rule (the rule outranks hysteresis).
"""

from __future__ import annotations

import math
from dataclasses import replace

from planner.errors import PlanningError
from planner.inference.options import price_device
from planner.inference.plan import InferencePlan, ServingAssignment
from planner.inference.problem import ServingInputs
from planner.inference.reasons import describe, label
from planner.inference.solver import assemble

__all__ = ["DEFAULT_MARGIN", "stabilise"]

DEFAULT_MARGIN = 0.05


def stabilise(
    inputs: ServingInputs, candidate: InferencePlan, *, margin: float = DEFAULT_MARGIN
) -> InferencePlan:
    """``candidate`` (the solver's plan for ``inputs``) with the changes from
    ``inputs.previous`` that do not beat the margin held back."""
    if not math.isfinite(margin) or not 0.0 <= margin < 1.0:
        raise PlanningError("margin", f"must lie in [0, 1), got {margin!r}")
    blocks = inputs.blocks
    assignments: list[ServingAssignment] = []
    for device in inputs.devices:
        new = candidate.assignment(device.device_id)
        previous = inputs.previous.get(device.device_id)
        if previous is None or previous == new.setting:
            assignments.append(new)
            continue
        old = label(*previous, blocks)
        if new.forced:
            assignments.append(replace(new, reason=f"leaves {old}: {new.reason}"))
            continue
        options = price_device(inputs, device)
        pool, _ = options.pool()
        k = options.index(previous)
        if k is None or not pool[k]:
            reason = f"leaves {old}, no longer a contender (allowed, memory, accuracy)"
            assignments.append(replace(new, reason=f"{reason}: {new.reason}"))
            continue
        kept = float(options.objective[k])
        if new.objective < (1.0 - margin) * kept:
            reason = (
                f"moves from {old} (objective {kept:.3g}): {new.objective:.3g} is more than "
                f"{margin:.0%} lower; {new.reason}"
            )
            assignments.append(replace(new, reason=reason))
            continue
        reason = (
            f"keeps {old} (objective {kept:.3g}): the best now, "
            f"{label(new.cut, new.threshold, blocks)} ({new.objective:.3g}), is not "
            f"{margin:.0%} lower; {describe(options, k)}"
        )
        assignments.append(options.assignment(k, reason, accuracy_met=bool(options.accurate[k])))
    return assemble(inputs, assignments)
