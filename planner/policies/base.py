"""What a split policy is: a decision from the round's cost table and the previous plan.

A policy is pure (no I/O, no clock): the edge builds a :class:`PolicyInputs` every round and asks
its policy for a :class:`planner.Plan`. Every policy is priced by the same cost model, so every
plan carries predictions whatever chose its cuts. One instance serves one run, so a policy may
keep state between rounds (``static`` keeps its first plan); :meth:`SplitPolicy.resume` hands it
the last plan of a run resumed from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from planner.cost import CostTable
from planner.plan import Plan
from planner.wire_choice import WireTables


@dataclass(frozen=True)
class PolicyInputs:
    """Everything a policy may decide from, for one round."""

    table: CostTable  # every device x cut, priced by the cost model
    alpha: float  # energy sensitivity: 1 saves time, 0 device energy
    previous: Mapping[str, int] = field(default_factory=dict)  # last plan (empty: round 1)
    # Configured cuts, for the policies that take them (``sl``): one for all, per-device overrides.
    fixed_cut: int | None = None
    fixed_cuts: Mapping[str, int] = field(default_factory=dict)
    # Whether each cut's price includes shipping the device part's weights every round (then a
    # cut change moves no byte the new cut's own price leaves out).
    sync_weights: bool = True
    # Each device's cost in every wire format it may use, where the edge lets the planner choose
    # formats (None: every device keeps its configured format, which ``table`` prices).
    wire: WireTables | None = None

    @property
    def device_ids(self) -> tuple[str, ...]:
        return self.table.device_ids

    @property
    def blocks(self) -> int:
        """L: cut L keeps every block on the device."""
        return self.table.num_cuts


@runtime_checkable
class SplitPolicy(Protocol):
    """One way of choosing every device's cut. Register an implementation with
    :func:`planner.policies.register_policy` (or name it as ``package.module:Class``)."""

    name: ClassVar[str]  # what --policy, scenario files and plan messages call it
    summary: ClassVar[str]  # one line for --help, reports and bench notes

    def decide(self, inputs: PolicyInputs) -> Plan:
        """The plan for this round."""
        ...

    def resume(self, previous: Mapping[str, int]) -> None:
        """Carry on from a checkpoint's last plan (the default ignores it)."""
        ...
