"""``ares``: every device's cut and exit threshold re-planned from the live readings (the exact
per-device optimum, :func:`planner.inference.solve`), with hysteresis against the settings in
force so that noisy readings do not make devices flap (:func:`planner.inference.stabilise`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import ClassVar

from planner.inference.plan import InferencePlan, Setting
from planner.inference.policies.registry import register_serving_policy
from planner.inference.problem import ServingInputs
from planner.inference.solver import solve
from planner.inference.stability import DEFAULT_MARGIN, stabilise


@register_serving_policy
class AdaptiveServing:
    name: ClassVar[str] = "ares"
    summary: ClassVar[str] = "cut and exit threshold per device, re-planned as readings change"

    def __init__(self, margin: float = DEFAULT_MARGIN) -> None:
        self.margin = margin
        self._in_force: dict[str, Setting] = {}

    def decide(self, inputs: ServingInputs) -> InferencePlan:
        # The caller's settings in force win; a caller that passes none gets the policy's memory.
        if not inputs.previous and self._in_force:
            inputs = replace(inputs, previous=self._in_force)
        plan = stabilise(inputs, solve(inputs), margin=self.margin)
        self._in_force = dict(plan.settings)
        return plan

    def resume(self, previous: Mapping[str, Setting]) -> None:
        self._in_force = dict(previous)
