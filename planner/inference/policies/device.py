"""``device``: everything on the device; the full model answers every request, no edge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from planner.inference.plan import InferencePlan, Setting
from planner.inference.policies.registry import register_serving_policy
from planner.inference.problem import ServingInputs
from planner.inference.solver import plan_for_settings


@register_serving_policy
class DeviceOnly:
    name: ClassVar[str] = "device"
    summary: ClassVar[str] = "cut L, exits off: the full model answers on the device"

    def decide(self, inputs: ServingInputs) -> InferencePlan:
        setting = inputs.exits.exits_off(inputs.blocks).setting()
        return plan_for_settings(inputs, setting, reason="device baseline")

    def resume(self, previous: Mapping[str, Setting]) -> None:
        pass
