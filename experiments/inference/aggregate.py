"""Per request records into the bench's figures: latency percentiles, accuracy, exit rate,
energy per request, counts; and the p99 latency in windows around a link drop. Pure: no I/O.

Definitions (also in summary.md):

- **latency**: end to end, as the load generator measures it, from the request's publish to
  its answer's arrival; error answers and lost requests have none. ``device_latency_*``: what
  the devices report, from a request's arrival on the device to its answer (the cost model's
  latency: the request's own delivery to the device, the same under every policy, left out).
- **accuracy**: of the answers with a label, the share equal to the request's ground truth.
- **exit rate**: of the answers with a label, the share a device's early exit gave (not the
  edge, not the whole model on the device, not a degraded answer).
- **energy per request**: the device's own accounting over its serving windows (compute and
  transmit seconds at its power figures) divided by the requests it answered in them.
- counts: ``sent == answered + lost``; ``answered`` counts error answers too (``errors``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "EnergyWindow",
    "Record",
    "energy_per_request",
    "latency_stats",
    "summarise",
    "summarise_devices",
    "windows_p99",
]


@dataclass(frozen=True, slots=True)
class Record:
    """One request of the load and what came of it; times in seconds on the bench's clock,
    counted from the start of the load."""

    device: str
    id: str
    sample: int  # its index in the held-out set
    truth: int
    sent_s: float
    answered_s: float | None = None
    label: int | None = None
    where: str | None = None  # device or edge
    exit: int | None = None
    cut: int | None = None
    degraded: bool = False
    error: str | None = None
    device_latency_ms: float | None = None  # what the device reports (arrival to answer)

    @property
    def latency_ms(self) -> float | None:
        if self.answered_s is None or self.error is not None:
            return None
        return (self.answered_s - self.sent_s) * 1000

    @property
    def correct(self) -> bool | None:
        return None if self.label is None else self.label == self.truth

    @property
    def exited(self) -> bool:
        return self.label is not None and self.exit is not None and not self.degraded

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency_ms"] = self.latency_ms
        data["correct"] = self.correct
        return data


@dataclass(frozen=True, slots=True)
class EnergyWindow:
    """One serving window of a device's telemetry: what it answered and what it cost."""

    device: str
    at_s: float  # arrival on the bench's clock
    requests: int
    energy_j: float | None
    busy_s: float = 0.0
    uplink_s: float = 0.0


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """Mean, median and 99th percentile (numpy's linear interpolation); None without any."""
    if not latencies_ms:
        return {"latency_ms_mean": None, "latency_ms_p50": None, "latency_ms_p99": None}
    values = np.asarray(latencies_ms, dtype=np.float64)
    return {
        "latency_ms_mean": float(values.mean()),
        "latency_ms_p50": float(np.percentile(values, 50)),
        "latency_ms_p99": float(np.percentile(values, 99)),
    }


def energy_per_request(windows: Iterable[EnergyWindow]) -> float | None:
    """Joules per answered request over ``windows``: None when none reports energy or none
    answered anything."""
    joules = requests = 0.0
    reported = False
    for window in windows:
        if window.energy_j is None:
            continue
        reported = True
        joules += window.energy_j
        requests += window.requests
    return joules / requests if reported and requests else None


def summarise(records: Sequence[Record], windows: Sequence[EnergyWindow]) -> dict[str, Any]:
    """The figures of ``records`` (one policy, or one device of it) and its energy windows."""
    answered = [r for r in records if r.answered_s is not None]
    labelled = [r for r in answered if r.label is not None]
    latencies = [lat for r in answered if (lat := r.latency_ms) is not None]
    device_latencies = [r.device_latency_ms for r in labelled if r.device_latency_ms is not None]
    on_device = latency_stats(device_latencies)
    return {
        **latency_stats(latencies),
        # The device's own measure, from the request's arrival on it to its answer: the
        # latency the plan optimises, without the request's delivery to the device.
        **{f"device_{name}": value for name, value in on_device.items()},
        "energy_j_per_request": energy_per_request(windows),
        "accuracy": sum(bool(r.correct) for r in labelled) / len(labelled) if labelled else None,
        "exit_rate": sum(r.exited for r in labelled) / len(labelled) if labelled else None,
        "edge_rate": (
            sum(r.where == "edge" for r in labelled) / len(labelled) if labelled else None
        ),
        "sent": len(records),
        "answered": len(answered),
        "degraded": sum(r.degraded for r in answered),
        "errors": sum(r.error is not None for r in answered),
        "lost": len(records) - len(answered),
        "energy_windows": len([w for w in windows if w.energy_j is not None]),
    }


def summarise_devices(
    records: Sequence[Record], windows: Sequence[EnergyWindow], devices: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """:func:`summarise` for each of ``devices``."""
    return {
        device: summarise(
            [r for r in records if r.device == device], [w for w in windows if w.device == device]
        )
        for device in devices
    }


def windows_p99(
    records: Sequence[Record], bounds: Mapping[str, tuple[float, float]]
) -> dict[str, dict[str, Any]]:
    """For each named ``[start, end)`` of send times: the p99 and mean latency (and the p99 the
    devices report) and how many requests were sent then (lost ones count in ``lost``)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (start, end) in bounds.items():
        inside = [r for r in records if start <= r.sent_s < end]
        latencies = [lat for r in inside if (lat := r.latency_ms) is not None]
        stats = latency_stats(latencies)
        labelled = [r for r in inside if r.label is not None]
        on_device = latency_stats(
            [lat for r in labelled if (lat := r.device_latency_ms) is not None]
        )
        out[name] = {
            "from_s": start,
            "to_s": end,
            "requests": len(inside),
            "lost": sum(r.answered_s is None for r in inside),
            "latency_ms_p99": stats["latency_ms_p99"],
            "latency_ms_mean": stats["latency_ms_mean"],
            "device_latency_ms_p99": on_device["latency_ms_p99"],
        }
    return out
