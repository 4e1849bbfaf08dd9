"""What a serving device saw since its last telemetry: answers by where they came from, the
exit rate and latencies. The edge re-plans from it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from schemas.serving import ServeAnswer


@dataclass
class ServeWindow:
    started: float = field(default_factory=time.monotonic)
    exited: int = 0
    local: int = 0  # the device's whole model answered (cut L)
    edge: int = 0
    degraded: int = 0
    errors: int = 0
    duplicates: int = 0
    # Requests that passed an exit with exits on: the exit rate's denominator.
    exit_chances: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def count(self, answer: ServeAnswer, *, had_exit: bool) -> None:
        """One answer sent; ``had_exit``: the request passed an exit with exits on."""
        if answer.error is not None:
            self.errors += 1
            return
        if answer.degraded:
            self.degraded += 1
        elif answer.where == "edge":
            self.edge += 1
        elif answer.exit is not None:
            self.exited += 1
        else:
            self.local += 1
        self.exit_chances += had_exit
        if answer.latency_ms is not None:
            self.latencies_ms.append(answer.latency_ms)

    @property
    def requests(self) -> int:
        return self.exited + self.local + self.edge + self.degraded

    @property
    def exit_rate(self) -> float | None:
        return self.exited / self.exit_chances if self.exit_chances else None

    def latency_summary(self) -> dict[str, float | None]:
        """Mean, median and 99th percentile in milliseconds (None without answers)."""
        if not self.latencies_ms:
            return {"latency_ms_mean": None, "latency_ms_p50": None, "latency_ms_p99": None}
        values = np.asarray(self.latencies_ms)
        return {
            "latency_ms_mean": float(values.mean()),
            "latency_ms_p50": float(np.percentile(values, 50)),
            "latency_ms_p99": float(np.percentile(values, 99)),
        }

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started
