"""Prometheus metrics of the edge service, read from its state at scrape time.

Nothing on the hot path calls into Prometheus: the service already keeps its counters, run report
and device registry, and a collector turns those into metrics when Prometheus asks. Served over
HTTP on ``metrics_port`` (``/metrics``) by prometheus_client's server thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_service.report import RunReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceView:
    """What the metrics show of one registered device."""

    state: str
    cut: int | None
    uplink_bps: float | None
    downlink_bps: float | None
    battery_pct: float | None
    speed_ratio: float | None = None  # last round's compute time over its plan's (1.0: as planned)


@dataclass(frozen=True)
class EdgeView:
    """A snapshot of the edge's state, taken on the event loop's side of the fence."""

    report: RunReport
    counters: Mapping[str, int]
    devices: Mapping[str, DeviceView]
    round_no: int
    rounds_planned: int
    loop_lag_s: Mapping[str, float] = field(default_factory=dict)  # quantile -> seconds


class EdgeCollector(Collector):
    """Turns an EdgeView into Prometheus metric families."""

    def __init__(self, view: Callable[[], EdgeView]) -> None:
        self._view = view

    def collect(self) -> Iterator[Any]:
        view = self._view()
        yield from _progress(view)
        yield from _traffic(view.counters)
        yield from _devices(view)
        yield from _outcomes(view.report)
        if view.loop_lag_s:
            lag = GaugeMetricFamily(
                "ares_edge_loop_lag_seconds",
                "Event-loop lag of the edge service (recent window)",
                labels=["quantile"],
            )
            for quantile, seconds in view.loop_lag_s.items():
                lag.add_metric([quantile], seconds)
            yield lag


def _progress(view: EdgeView) -> Iterator[Any]:
    report = view.report
    yield _counter("ares_rounds_completed", "Rounds completed", len(report.rounds))
    yield _gauge("ares_round_current", "The round in progress (0: none yet)", view.round_no)
    yield _gauge("ares_rounds_planned", "Rounds this run will train", view.rounds_planned)
    if report.rounds:
        last = report.rounds[-1]
        yield _gauge("ares_accuracy", "Test accuracy after the last round", last.accuracy)
        yield _gauge("ares_round_duration_seconds", "Duration of the last round", last.duration_s)
        yield _gauge("ares_plan_objective", "The last plan's normalised objective", last.objective)


def _traffic(counters: Mapping[str, int]) -> Iterator[Any]:
    yield _counter("ares_batches_served", "Activation batches answered with a gradient",
                   counters.get("batches", 0))  # fmt: skip
    families = {
        "messages_in": CounterMetricFamily(
            "ares_messages_received", "MQTT messages received, by channel", labels=["channel"]
        ),
        "bytes_in": CounterMetricFamily(
            "ares_bytes_received", "Payload bytes received, by channel", labels=["channel"]
        ),
        "messages_out": CounterMetricFamily(
            "ares_messages_sent", "MQTT messages published, by channel", labels=["channel"]
        ),
        "bytes_out": CounterMetricFamily(
            "ares_bytes_sent", "Payload bytes published, by channel", labels=["channel"]
        ),
        "rejected": CounterMetricFamily(
            "ares_rejected_messages", "Inbound messages refused, by reason", labels=["reason"]
        ),
    }
    other = CounterMetricFamily("ares_events", "Other edge events", labels=["event"])
    for name, count in counters.items():
        kind, _, label = name.partition(".")
        family = families.get(kind) if label else None
        if family is not None:
            family.add_metric([label], count)
        elif name != "batches":
            other.add_metric([name], count)
    yield from families.values()
    yield other


def _devices(view: EdgeView) -> Iterator[Any]:
    online = sum(1 for d in view.devices.values() if d.state not in ("offline", "refused"))
    yield _gauge("ares_devices_online", "Registered devices not offline nor refused", online)
    split = GaugeMetricFamily("ares_device_split", "Current cut per device", labels=["device"])
    up = GaugeMetricFamily(
        "ares_device_uplink_bps", "Latest uplink estimate per device", labels=["device"]
    )
    down = GaugeMetricFamily(
        "ares_device_downlink_bps", "Latest downlink estimate per device", labels=["device"]
    )
    battery = GaugeMetricFamily(
        "ares_device_battery_percent", "Battery level per device", labels=["device"]
    )
    speed = GaugeMetricFamily(
        "ares_device_speed_ratio",
        "Last round's compute time over what the device's timings predicted (1: as planned)",
        labels=["device"],
    )
    for device_id, device in sorted(view.devices.items()):
        for family, value in (
            (split, device.cut),
            (up, device.uplink_bps),
            (down, device.downlink_bps),
            (battery, device.battery_pct),
            (speed, device.speed_ratio),
        ):
            if value is not None:
                family.add_metric([device_id], float(value))
    yield from (split, up, down, battery, speed)


def _outcomes(report: RunReport) -> Iterator[Any]:
    """Per-device round outcomes (rounds.Outcome) and device energy, over the run."""
    outcomes = CounterMetricFamily(
        "ares_device_rounds", "Device rounds by outcome", labels=["device", "status"]
    )
    energy = CounterMetricFamily(
        "ares_device_energy_joules", "Device energy accounted by the cost model", labels=["device"]
    )
    tally: dict[tuple[str, str], int] = {}
    joules: dict[str, float] = {}
    for entry in report.rounds:
        for device_id, device in entry.devices.items():
            key = (device_id, device.status)
            tally[key] = tally.get(key, 0) + 1
            joules[device_id] = joules.get(device_id, 0.0) + device.energy_j
    for (device_id, status), count in sorted(tally.items()):
        outcomes.add_metric([device_id, status], count)
    for device_id, value in sorted(joules.items()):
        energy.add_metric([device_id], value)
    yield outcomes
    yield energy


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class MetricsServer:
    """The /metrics endpoint for one collector, as an async context manager.

    prometheus_client serves from its own thread: a scrape never waits on the event loop, and
    the collector reads an EdgeView snapshot that the loop refreshes.
    """

    def __init__(self, collector: Collector, port: int, host: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self._host, self._port = host, port
        self._server: Any = None
        self._thread: Any = None

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the one chosen for port 0)."""
        return int(self._server.server_port) if self._server is not None else self._port

    async def __aenter__(self) -> Self:
        self._server, self._thread = start_http_server(
            self._port, addr=self._host, registry=self.registry
        )
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=2.0)
            self._server = self._thread = None
