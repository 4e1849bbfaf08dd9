"""``fl``: every block on the device, as in federated learning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from planner.plan import Plan, plan_for_cuts
from planner.policies.base import PolicyInputs
from planner.policies.registry import register_policy


@register_policy
class FederatedLearning:
    name: ClassVar[str] = "fl"
    summary: ClassVar[str] = "every block on the device: federated learning"

    def decide(self, inputs: PolicyInputs) -> Plan:
        return plan_for_cuts(inputs.table, inputs.alpha, inputs.blocks, reason="federated learning")

    def resume(self, previous: Mapping[str, int]) -> None:
        pass
