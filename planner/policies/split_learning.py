"""``sl``: one configured cut for every device (classic split learning), with per-device
overrides."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from planner.errors import PlanningError
from planner.plan import Plan, plan_for_cuts
from planner.policies.base import PolicyInputs
from planner.policies.registry import register_policy


@register_policy
class SplitLearning:
    name: ClassVar[str] = "sl"
    summary: ClassVar[str] = (
        "one fixed cut for all (--split; per device --splits): classic split learning"
    )

    def decide(self, inputs: PolicyInputs) -> Plan:
        if inputs.fixed_cut is None:
            raise PlanningError("fixed_cut", "the sl policy needs a configured cut")
        cuts = {d: inputs.fixed_cuts.get(d, inputs.fixed_cut) for d in inputs.device_ids}
        return plan_for_cuts(inputs.table, inputs.alpha, cuts, reason="fixed split (configuration)")

    def resume(self, previous: Mapping[str, int]) -> None:
        pass
