"""The serving devices the edge knows: what each said in its hello, its latest readings, and
which link rates to believe.

The link rule is the training edge's (``edge_service.registry``): a device's newest measurement
(``measured (stale)`` once older than the staleness bound), else what it declared, else the
edge's assumption. It is restated here rather than imported: that registry is keyed by the
training hello, and importing it loads the training service.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from schemas.serving import ServeHello, ServeTelemetry


@dataclass(frozen=True, slots=True)
class LinkRates:
    uplink_bps: float
    downlink_bps: float
    source: str  # measured, measured (stale), declared or assumed


@dataclass(frozen=True, slots=True)
class ObservedRate:
    """Early exits a device saw at one (cut, threshold), summed over its telemetry windows."""

    cut: int
    threshold: float | None
    exited: int = 0
    requests: int = 0

    @property
    def fraction(self) -> float | None:
        return self.exited / self.requests if self.requests else None


@dataclass
class ServingRecord:
    hello: ServeHello
    online: bool = True
    telemetry: ServeTelemetry | None = None
    telemetry_at: float = 0.0  # time.monotonic() of the last telemetry
    measured_link: tuple[float, float | None] | None = None
    observed: ObservedRate | None = None

    def take_telemetry(self, telemetry: ServeTelemetry) -> None:
        self.telemetry, self.telemetry_at = telemetry, time.monotonic()
        if telemetry.uplink_bps is not None:
            self.measured_link = (telemetry.uplink_bps, telemetry.downlink_bps)
        if telemetry.cut is None:
            return
        seen = self.observed
        if seen is None or (seen.cut, seen.threshold) != (telemetry.cut, telemetry.threshold):
            seen = ObservedRate(telemetry.cut, telemetry.threshold)
        # Requests answered alone (degraded) or refused say nothing of the exits.
        counted = telemetry.exited + telemetry.edge + telemetry.local
        self.observed = ObservedRate(
            seen.cut, seen.threshold, seen.exited + telemetry.exited, seen.requests + counted
        )

    @property
    def battery_pct(self) -> float | None:
        if self.telemetry is not None and self.telemetry.battery_pct is not None:
            return self.telemetry.battery_pct
        return self.hello.battery_pct


class Fleet:
    """Device id -> record of every serving device that said hello."""

    def __init__(self, *, assumed_link_bps: float, stale_after_s: float) -> None:
        self.assumed_link_bps = assumed_link_bps
        self.stale_after_s = stale_after_s
        self.records: dict[str, ServingRecord] = {}

    def hello(self, hello: ServeHello) -> bool:
        """Record a hello; True if the device is new, back, or a new process of it."""
        known = self.records.get(hello.device_id)
        if known is not None and known.online and known.hello == hello:
            return False
        if known is not None and known.hello.instance == hello.instance:
            known.hello, known.online = hello, True  # the same process: its readings still hold
        else:
            self.records[hello.device_id] = ServingRecord(hello)
        return True

    def offline(self, device_id: str) -> bool:
        """True if the device was online until now."""
        record = self.records.get(device_id)
        if record is None or not record.online:
            return False
        record.online = False
        return True

    def online(self) -> dict[str, ServingRecord]:
        return {d: r for d, r in self.records.items() if r.online}

    def link(self, device_id: str) -> LinkRates:
        """The rates to believe for ``device_id`` (see the module docstring); a missing
        downlink is the uplink."""
        record = self.records.get(device_id)
        if record is not None and record.measured_link is not None:
            up, down = record.measured_link
            fresh = time.monotonic() - record.telemetry_at <= self.stale_after_s
            return LinkRates(up, down or up, "measured" if fresh else "measured (stale)")
        if record is not None and record.hello.uplink_bps is not None:
            up = record.hello.uplink_bps
            return LinkRates(up, record.hello.downlink_bps or up, "declared")
        return LinkRates(self.assumed_link_bps, self.assumed_link_bps, "assumed")
