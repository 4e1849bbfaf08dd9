"""One setting for every device, chosen once by the cost model: what ``sl-best`` and
``exits-static`` fix on their first decision and keep (never re-planned)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from planner.inference.options import price_device
from planner.inference.plan import InferencePlan, Setting
from planner.inference.problem import ServingInputs
from planner.inference.reasons import label
from planner.inference.solver import plan_for_settings

__all__ = ["ChosenOnce", "SharedChoice", "best_shared"]


@dataclass(frozen=True, slots=True)
class SharedChoice:
    """The chosen setting, its summed objective over the devices, and the runner-up's."""

    setting: Setting
    objective: float
    runner_up: tuple[Setting, float] | None

    def why(self, blocks: int) -> str:
        line = (
            f"{label(*self.setting, blocks)} for every device, chosen once by the cost model from "
            f"the first readings (summed objective {self.objective:.3g}"
        )
        if self.runner_up is not None:
            setting, objective = self.runner_up
            line += f"; next best {label(*setting, blocks)}: {objective:.3g}"
        return line + ")"


def best_shared(inputs: ServingInputs, candidates: Iterable[Setting]) -> SharedChoice | None:
    """Of ``candidates``, the setting of least summed objective among those every device may
    take (allowed, within memory, at or above the accuracy floor); None if there is none. Ties go
    to the lower cut, then the lower threshold."""
    options = [price_device(inputs, device) for device in inputs.devices]
    scores: dict[Setting, float] = {}
    for setting in candidates:
        total = 0.0
        for device_options in options:
            k = device_options.index(setting)
            if k is None or not device_options.usable[k] or not device_options.accurate[k]:
                break
            total += float(device_options.objective[k])
        else:
            scores[setting] = total
    ranked = sorted(scores, key=lambda s: (scores[s], s))
    if not ranked:
        return None
    runner_up = (ranked[1], scores[ranked[1]]) if len(ranked) > 1 else None
    return SharedChoice(ranked[0], scores[ranked[0]], runner_up)


class ChosenOnce:
    """A policy that picks one setting for every device on its first decision and keeps it.
    Subclasses say how (:meth:`choose`); a resumed instance keeps the setting it is handed."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def __init__(self) -> None:
        self._setting: Setting | None = None
        self._why = "resumed"

    def choose(self, inputs: ServingInputs) -> tuple[Setting, str]:
        """The setting for every device and a line saying why."""
        raise NotImplementedError

    def decide(self, inputs: ServingInputs) -> InferencePlan:
        if self._setting is None:
            self._setting, self._why = self.choose(inputs)
        return plan_for_settings(inputs, self._setting, reason=f"{self.name}, {self._why}")

    def resume(self, previous: Mapping[str, Setting]) -> None:
        if previous:
            self._setting = next(iter(previous.values()))
