"""``sl-best``: the best fixed cut without exits, one for every device, chosen once by the cost
model from the first readings and never re-planned (Neurosurgeon's kind of split).

Candidates are every cut ``0..L`` with exits off: the strongest fixed cut, so that it may
coincide with ``edge`` or ``device`` (the training bench's sl-best takes only cuts ``1..L-1``,
since at L nothing is split in training; in serving the best fixed cut is the fair baseline for
adaptation, ends included).
"""

from __future__ import annotations

from typing import ClassVar

from planner.errors import PlanningError
from planner.inference.plan import Setting
from planner.inference.policies.registry import register_serving_policy
from planner.inference.policies.shared import ChosenOnce, SharedChoice, best_shared
from planner.inference.problem import ServingInputs


def choose_fixed_cut(inputs: ServingInputs) -> SharedChoice:
    """The exits-off setting of least summed objective that every device may take."""
    candidates = [inputs.exits.exits_off(cut).setting() for cut in range(inputs.blocks + 1)]
    choice = best_shared(inputs, candidates)
    if choice is None:
        raise PlanningError("devices", "no cut is allowed for every device and fits its memory")
    return choice


@register_serving_policy
class BestFixedCut(ChosenOnce):
    name: ClassVar[str] = "sl-best"
    summary: ClassVar[str] = "the best single cut without exits, chosen once by the cost model"

    def choose(self, inputs: ServingInputs) -> tuple[Setting, str]:
        choice = choose_fixed_cut(inputs)
        return choice.setting, choice.why(inputs.blocks)
