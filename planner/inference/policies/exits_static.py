"""``exits-static``: fixed exits without adaptation. One cut and one threshold for every device,
chosen once by the cost model from the first readings (the pair of least summed objective among
the settings with exits on that meet the accuracy floor), never re-planned.

Why the cut is chosen with the threshold rather than taken from ``sl-best``: sl-best's cut is
often an end (cut 0 on a fleet where one slow board dominates), where a device has no exit, and
exits-static would then be sl-best again. Chosen jointly it is the best static use of the exits,
so ``ares`` against it measures what adaptation adds, and it against ``sl-best`` what the exits
add. If no setting with exits on is allowed for every device, it falls back to sl-best's.
"""

from __future__ import annotations

from typing import ClassVar

from planner.inference.plan import Setting
from planner.inference.policies.registry import register_serving_policy
from planner.inference.policies.shared import ChosenOnce, best_shared
from planner.inference.policies.sl_best import choose_fixed_cut
from planner.inference.problem import ServingInputs


@register_serving_policy
class StaticExits(ChosenOnce):
    name: ClassVar[str] = "exits-static"
    summary: ClassVar[str] = "one cut and exit threshold for all, chosen once, never re-planned"

    def choose(self, inputs: ServingInputs) -> tuple[Setting, str]:
        exits = inputs.exits
        settings = [
            p.setting()
            for p in exits.points
            if p.exits and any(q <= p.cut for q in exits.exit_positions)
        ]
        choice = best_shared(inputs, settings)
        if choice is not None:
            return choice.setting, choice.why(inputs.blocks)
        fallback = choose_fixed_cut(inputs)
        why = "no setting with exits suits every device: sl-best's, " + fallback.why(inputs.blocks)
        return fallback.setting, why
