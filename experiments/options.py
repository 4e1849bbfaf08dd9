"""What a bench runs: its policies (the edge's, with sl in two flavours), the scenario, rounds,
alpha, seed and target, and a quick run's limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planner.policies import POLICIES as EDGE_POLICIES
from testbed.scenario import Scenario

__all__ = ["POLICIES", "QUICK_BATCHES", "QUICK_ROUNDS", "BenchOptions"]

# The edge's policies, but sl in two flavours: at the cost model's best shared cut and at cut 1.
POLICIES = tuple(sorted({*EDGE_POLICIES.names(), "sl-best", "sl-first"} - {"sl"}))
QUICK_ROUNDS = 2
QUICK_BATCHES = 3


@dataclass(frozen=True)
class BenchOptions:
    scenario: Scenario
    out: Path
    policies: tuple[str, ...] = POLICIES
    rounds: int | None = None  # None: the scenario's
    alpha: float | None = None  # None: the scenario's
    seed: int = 0
    target_accuracy: float | None = None  # None: see experiments.metrics.default_target
    quick: bool = False
    sl_cut: int | None = None  # sl-best's cut; None: chosen by the cost model
    timeout_s: float = 1800.0  # per policy run
    progress: bool | None = None  # None: bars when stderr is a terminal

    @property
    def effective_alpha(self) -> float:
        return self.scenario.alpha if self.alpha is None else self.alpha

    @property
    def effective_rounds(self) -> int:
        if self.rounds is not None:
            return self.rounds
        return QUICK_ROUNDS if self.quick else self.scenario.rounds

    @property
    def batches_per_round(self) -> int | None:
        """The scenario's, capped in a quick run (None: one local epoch)."""
        batches = self.scenario.batches_per_round
        if self.quick:
            return QUICK_BATCHES if batches is None else min(batches, QUICK_BATCHES)
        return batches
