"""How an experiment has a scenario run: it asks for a :class:`ScenarioRun` and a
:data:`RunScenario` of the caller's starts the processes (the CLI's: the demo's machinery, a
Mosquitto, the edge and one process per device), so that experiments never import the CLI."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from testbed.scenario import Scenario

__all__ = ["RunOutcome", "RunScenario", "ScenarioRun"]


@dataclass(frozen=True)
class ScenarioRun:
    """One run of the scenario: the edge's settings over the scenario's (None: the scenario's),
    where its processes log, and how the run is shown. It starts from scratch, never resuming a
    checkpoint an earlier bench left in ``run_dir``."""

    scenario: Scenario
    run_dir: Path
    overrides: Mapping[str, Any]
    rounds: int
    timeout_s: float
    progress: bool | None  # None: a bar when stderr is a terminal
    label: str  # names the run in progress output: the policy


class RunOutcome(Protocol):
    """How a run ended. ``code``: 0 when the edge finished and wrote its report; 130 when
    interrupted; else a failure, described by ``problem``."""

    @property
    def code(self) -> int: ...
    @property
    def wall_s(self) -> float: ...
    @property
    def run_dir(self) -> Path: ...
    @property
    def report(self) -> dict[str, Any] | None: ...
    @property
    def problem(self) -> str: ...
    @property
    def ok(self) -> bool: ...


RunScenario = Callable[[ScenarioRun], RunOutcome]  # runs it to the end, stopping what it started
