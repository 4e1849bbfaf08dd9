"""What a serving policy is: a decision from a :class:`ServingInputs` to an
:class:`InferencePlan`. Pure (no I/O, no clock); one instance serves one run, so a policy may keep
state between re-plans (``sl-best`` and ``exits-static`` keep their first choice)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Protocol, runtime_checkable

from planner.inference.plan import InferencePlan, Setting
from planner.inference.problem import ServingInputs

__all__ = ["ServingPolicy"]


@runtime_checkable
class ServingPolicy(Protocol):
    """One way of choosing every device's cut and exit threshold. Register an implementation
    with :func:`planner.inference.policies.register_serving_policy` (or name it as
    ``package.module:Class``)."""

    name: ClassVar[str]  # what settings, bench results and plan messages call it
    summary: ClassVar[str]  # one line for --help and reports

    def decide(self, inputs: ServingInputs) -> InferencePlan:
        """The plan for these readings."""
        ...

    def resume(self, previous: Mapping[str, Setting]) -> None:
        """Carry on from the settings last in force (e.g. after a restart)."""
        ...
