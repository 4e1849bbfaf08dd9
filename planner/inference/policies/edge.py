"""``edge``: everything on the edge; the device sends the raw input with every request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from planner.inference.plan import InferencePlan, Setting
from planner.inference.policies.registry import register_serving_policy
from planner.inference.problem import ServingInputs
from planner.inference.solver import plan_for_settings


@register_serving_policy
class EdgeOnly:
    name: ClassVar[str] = "edge"
    summary: ClassVar[str] = "cut 0: every request's raw input is sent and the edge answers"

    def decide(self, inputs: ServingInputs) -> InferencePlan:
        setting = inputs.exits.exits_off(0).setting()
        return plan_for_settings(inputs, setting, reason="edge baseline")

    def resume(self, previous: Mapping[str, Setting]) -> None:
        pass
