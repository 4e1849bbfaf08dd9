"""How the serving bench has its processes run: it describes a :class:`ServingRun` and a
:data:`LaunchServing` of the caller's (the CLI's: a Mosquitto, ``ares serve`` and one
``ares device --serve`` per scenario device, with the testbed's emulated boards, links and
batteries) starts them, so that experiments never import the CLI. Training the model is asked
of a :data:`TrainModel` the same way."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from testbed.scenario import Scenario

__all__ = ["LaunchServing", "ServingRun", "ServingSystem", "TrainModel", "TrainingRun"]


@dataclass(frozen=True)
class ServingRun:
    scenario: Scenario
    run_dir: Path  # the processes' logs
    artifact: Path
    policy: str
    alpha: float
    seed: int
    deadline_ms: float
    telemetry_interval_s: float


class ServingSystem(Protocol):
    """A run's broker, and its processes once started."""

    @property
    def url(self) -> str: ...

    @property
    def link_clock_at_load(self) -> bool:
        """Whether the links' schedules start with the load (``link_schedules``); else each
        device's link follows its schedule from the device's own start."""
        ...

    def start_processes(self) -> None:
        """Start the serving edge and the devices (they connect in the background)."""
        ...

    def link_schedules(self) -> Coroutine[Any, Any, None] | None:
        """The links' schedules where the launcher runs them, to run from the start of the
        load until cancelled; None where each device runs its own."""
        ...

    def problem(self) -> str | None:
        """Why the run cannot go on (a process exited), or None."""
        ...


LaunchServing = Callable[[ServingRun], AbstractContextManager[ServingSystem]]


@dataclass(frozen=True)
class TrainingRun:
    """Train ``scenario``'s model briefly (``quick``: a smoke run's rounds) and write its
    artifact, exits calibrated on the held-out set, to ``artifact``."""

    scenario: Scenario
    run_dir: Path
    artifact: Path
    seed: int
    alpha: float
    quick: bool
    timeout_s: float
    progress: bool | None


class TrainOutcome(Protocol):
    @property
    def ok(self) -> bool: ...
    @property
    def problem(self) -> str: ...


TrainModel = Callable[[TrainingRun], TrainOutcome]
