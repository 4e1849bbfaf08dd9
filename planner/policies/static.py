"""``static``: planned once by the ARES solver, re-planned only when the set of devices
changes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from planner.plan import Plan, plan_for_cuts
from planner.policies.base import PolicyInputs
from planner.policies.registry import register_policy
from planner.solver import solve


@register_policy
class StaticPlan:
    name: ClassVar[str] = "static"
    summary: ClassVar[str] = "planned once, re-planned only when the set of devices changes"

    def __init__(self) -> None:
        self._cuts: dict[str, int] | None = None

    def decide(self, inputs: PolicyInputs) -> Plan:
        if self._cuts is None or set(self._cuts) != set(inputs.device_ids):
            self._cuts = dict(solve(inputs.table, inputs.alpha).cuts)
        return plan_for_cuts(inputs.table, inputs.alpha, self._cuts, reason="planned once (static)")

    def resume(self, previous: Mapping[str, int]) -> None:
        if previous:
            self._cuts = dict(previous)
