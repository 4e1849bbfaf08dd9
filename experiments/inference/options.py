"""What a serving bench runs: its policies, the scenario, the load (rate and length), alpha,
seed, the model file, and a quick run's limits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from testbed.scenario import Scenario
from testbed.schedule import parse_schedule

__all__ = [
    "QUICK_DURATION_S",
    "SERVING_BENCH_POLICIES",
    "InferenceOptions",
    "last_link_change_s",
]

# Issue 15's order: the adaptive policy, then the baselines (points 4 and 6).
SERVING_BENCH_POLICIES = ("ares", "edge", "device", "sl-best", "exits-static")
DEFAULT_DURATION_S = 30.0
AFTER_LAST_CHANGE_S = 20.0  # a default run lasts this long past the scenario's last link step
QUICK_DURATION_S = 4.0
QUICK_ROUNDS = 2
QUICK_BATCHES = 3


@dataclass(frozen=True)
class InferenceOptions:
    scenario: Scenario
    out: Path
    policies: tuple[str, ...] = SERVING_BENCH_POLICIES
    rate: float = 5.0  # requests per second per device, open loop
    duration_s: float | None = None  # per policy; None: see ``effective_duration_s``
    requests: int | None = None  # per device, instead of a duration
    alpha: float | None = None  # None: the scenario's
    seed: int = 0
    artifact: Path | None = None  # None: trained once for the scenario, cached in ``out``
    quick: bool = False
    timeout_s: float = 900.0  # per policy run (and for training the model)
    deadline_ms: float = 1000.0  # each request's; past it a device answers alone
    telemetry_interval_s: float = 2.0  # the devices' serving windows
    progress: bool | None = None  # training's progress bars; None: when stderr is a terminal

    @property
    def effective_alpha(self) -> float:
        return self.scenario.alpha if self.alpha is None else self.alpha

    @property
    def effective_duration_s(self) -> float:
        """Seconds of load per policy: as asked, else long enough to see every link step of
        the scenario and what follows it (at least ``DEFAULT_DURATION_S``)."""
        if self.duration_s is not None:
            return self.duration_s
        if self.quick:
            return QUICK_DURATION_S
        return max(DEFAULT_DURATION_S, last_link_change_s(self.scenario) + AFTER_LAST_CHANGE_S)

    @property
    def requests_per_device(self) -> int:
        if self.requests is not None:
            return self.requests
        return max(1, math.floor(self.effective_duration_s * self.rate))

    @property
    def request_bound_s(self) -> float:
        """How long after its send a request counts as lost: its deadline, and as much again
        for the answer to arrive on a loaded machine."""
        return 2 * self.deadline_ms / 1000 + 5.0


def last_link_change_s(scenario: Scenario) -> float:
    """When the scenario's last link step happens, on the run's clock (0: none)."""
    last = 0.0
    for device in scenario.devices:
        for spec in (device.uplink, device.downlink):
            if spec is not None:
                changes = parse_schedule(spec).scaled(scenario.time_scale).changes()
                last = max(last, changes[-1][0])
    return last
