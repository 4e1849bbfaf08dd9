"""``ares``: every device's cut (and, where the edge allows, its wire format) re-planned every
round (the exact optimum of the ARES objective), with hysteresis against the previous plan so
noise does not make cuts flap."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from planner.plan import Plan
from planner.policies.base import PolicyInputs
from planner.policies.registry import register_policy
from planner.solver import solve
from planner.stability import stabilise
from planner.wire_choice import solve_with_formats


@register_policy
class AdaptiveSplit:
    name: ClassVar[str] = "ares"
    summary: ClassVar[str] = "re-planned every round: the exact ARES optimum, with hysteresis"
    chooses_formats: ClassVar[bool] = True  # uses PolicyInputs.wire where the edge gives it

    def decide(self, inputs: PolicyInputs) -> Plan:
        # With sync_weights every round start carries the device part's weights and every round
        # end brings them back, and each cut's row prices that. A new cut then moves no byte its
        # own row leaves out: charging the blocks' transfer again would hold a device on a cut
        # the plan knows is worse. Only the noise margin remains.
        move_s_per_byte = 0.0 if inputs.sync_weights else None
        if inputs.wire is not None:  # the format is chosen with the cut
            return solve_with_formats(
                inputs.wire, inputs.alpha, previous=inputs.previous or None,
                move_s_per_byte=move_s_per_byte,
            )  # fmt: skip
        candidate = solve(inputs.table, inputs.alpha)
        return stabilise(
            inputs.previous or None,
            candidate,
            inputs.table,
            inputs.alpha,
            move_s_per_byte=move_s_per_byte,
        )

    def resume(self, previous: Mapping[str, int]) -> None:
        pass  # the previous plan comes in every round's inputs
