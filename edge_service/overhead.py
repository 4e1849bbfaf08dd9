"""What the cost model misses, learned online from the rounds it priced.

The cost model prices a device's blocks at their profiled times, its transfers at its link
rates and the edge's part at the edge's own block times measured alone. A round also costs:

- **Theta** (``exchange_s``), per split batch: the device's batch round trip beyond the priced
  transfers and the edge's service of the batch (broker hops both ways, framing, both event
  loops). Sample: the device's median round trip - priced transfer - the edge's mean service.
- **Split compute** (``split_compute_s``), per split batch: what the device's compute took beyond
  its blocks' priced times. A split batch runs as two steps with an exchange between them, and
  on a shared host competes with the edge's compute; a whole-model step does neither. Sample:
  busy / batches - priced compute.
- **A round's fixed cost** (``round_s``), at every cut: the round start's delivery, building the
  device's part, the upload of its part, all beyond the priced weight transfers. Sample:
  measured round - busy - priced weights - (split) batches * round trip.
- **Queueing at the edge** (:meth:`OverheadLearner.queue_factor`): the edge's measured service
  time per batch (receipt to reply: waiting for a compute thread, and compute slowed by
  everything else running) over its profiled compute for the cut, pooled over the devices it
  served in the round, as a function of how many it served at once.

Only split rounds sample Theta, split compute and queueing (a whole-model round exchanges
nothing per batch). Each estimate is the median of the last ``window`` (3) samples: one round
disturbed by something else does not move it past the others. A device never measured takes the
median of the devices that were (same edge, same broker), else nothing is known and the caller
assumes zero (source ``assumed``). Pure code: the driver feeds it, the planner reads numbers.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

__all__ = ["DeviceOverheads", "OverheadLearner", "RoundObservation"]

WINDOW = 3  # rounds: a level that shifts shows after two, one outlier never


@dataclass(frozen=True)
class RoundObservation:
    """One device's round as measured, beside what the cost model priced for its cut.

    Priced figures are per batch unless named otherwise, at the cut the device ran, with the
    device's compute timings, link rates and wire format the plan used.
    """

    device_id: str
    split: bool  # its cut was below L: every batch went to the edge and back
    batches: int
    round_s: float  # measured at the edge: round start sent to part received
    busy_s: float  # measured by the device: its compute in the round
    weights_s: float  # priced: its part's weights down and up, once per round
    compute_s: float  # priced: its blocks' forward and backward
    transfer_s: float = 0.0  # priced: activations up and gradient down
    edge_compute_s: float = 0.0  # priced: the edge's blocks for the cut, profiled alone
    service_s: float = 0.0  # measured: the edge's mean time from receipt to reply
    round_trip_s: float | None = None  # measured by the device: its median batch round trip
    # The transfers were priced over link rates measured or declared. Over the edge's assumed
    # rates they say nothing of the link: neither Theta nor the round's fixed cost is learned.
    link_known: bool = True

    def problem(self) -> str | None:
        """Why this observation cannot be learned from (None: it can)."""
        numbers = (self.round_s, self.busy_s, self.weights_s, self.compute_s, self.transfer_s,
                   self.edge_compute_s, self.service_s, self.round_trip_s or 0.0)  # fmt: skip
        if not all(math.isfinite(v) and v >= 0 for v in numbers):
            return "a time is negative or not finite"
        if self.batches < 1:
            return "no batches"
        if self.round_s <= 0:
            return "no round time"
        return None


@dataclass(frozen=True)
class DeviceOverheads:
    """The learned figures for one device; None where nothing is known (price it as zero)."""

    exchange_s: float | None = None
    split_compute_s: float | None = None
    round_s: float | None = None
    # measured: from this device's own rounds; from other devices: theirs (it has not
    # run a split round yet); assumed: nothing measured anywhere.
    source: str = "assumed"


@dataclass
class _DeviceSamples:
    exchange: deque[float]
    split_compute: deque[float]
    round: deque[float]

    @classmethod
    def new(cls, window: int) -> _DeviceSamples:
        return cls(deque(maxlen=window), deque(maxlen=window), deque(maxlen=window))


@dataclass
class OverheadLearner:
    """Per device and for the edge, the median of the last ``window`` samples of each figure."""

    window: int = WINDOW
    rejected: int = 0  # observations that could not be learned from
    _devices: dict[str, _DeviceSamples] = field(default_factory=dict)
    _queue: dict[int, deque[float]] = field(default_factory=dict)  # devices at once -> factors

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")

    def observe(self, observations: Iterable[RoundObservation], served_at_once: int) -> list[str]:
        """Learn from one round. ``served_at_once``: how many devices the edge served split
        batches for in it. Returns why each observation it left out was (and counts them)."""
        problems: list[str] = []
        service = profiled = 0.0
        for seen in observations:
            problem = seen.problem()
            if problem is not None:
                self.rejected += 1
                problems.append(f"{seen.device_id}: {problem}")
                continue
            samples = self._devices.setdefault(seen.device_id, _DeviceSamples.new(self.window))
            per_round = seen.round_s - seen.busy_s - seen.weights_s
            if not seen.split:
                if seen.link_known:
                    samples.round.append(per_round)
                continue
            samples.split_compute.append(seen.busy_s / seen.batches - seen.compute_s)
            if seen.round_trip_s is not None and seen.link_known:
                samples.exchange.append(seen.round_trip_s - seen.transfer_s - seen.service_s)
                samples.round.append(per_round - seen.batches * seen.round_trip_s)
            if seen.edge_compute_s > 0 and seen.service_s > 0:
                service += seen.batches * seen.service_s
                profiled += seen.batches * seen.edge_compute_s
        if profiled > 0 and served_at_once >= 1:
            factors = self._queue.setdefault(served_at_once, deque(maxlen=self.window))
            factors.append(service / profiled)
        return problems

    def device(self, device_id: str) -> DeviceOverheads:
        return self.devices([device_id])[device_id]

    def devices(self, device_ids: Iterable[str]) -> dict[str, DeviceOverheads]:
        """What is known of each device. One pass over the devices measured, whatever the
        number asked about (a plan asks about every device online, each round)."""
        own = {d: self._own(s) for d, s in self._devices.items()}
        split = [o for o in own.values() if o.exchange_s is not None]
        # For a device that has not split yet: the split figures of those that did.
        pooled = DeviceOverheads(
            exchange_s=_median_of(o.exchange_s for o in split),
            split_compute_s=_median_of(o.split_compute_s for o in split),
            round_s=_median_of(o.round_s for o in split),
            source="from other devices",
        )
        known = {}
        for device_id in device_ids:
            mine = own.get(device_id)
            if mine is not None and mine.exchange_s is not None:
                known[device_id] = replace(mine, source="measured")
                continue
            round_s = mine.round_s if mine is not None else None  # its own, if it has one
            if split:
                fallback = pooled.round_s if round_s is None else round_s
                known[device_id] = replace(pooled, round_s=fallback)
            else:
                source = "assumed" if round_s is None else "measured"
                known[device_id] = DeviceOverheads(round_s=round_s, source=source)
        return known

    def queue_factor(self, at_once: int) -> float | None:
        """The edge's service time per batch over its profiled compute when it serves
        ``at_once`` devices' batches (None: never measured).

        Between two measured counts, interpolated linearly; outside them, in proportion from
        the nearest, q(m) * at_once / m: a busy edge serves each device's batch after the
        others' (closed loop, each device waits for its gradient), so the factor grows with
        their number. Measured on the demo's host (2 cores, small_cnn at cut 1, 1, 2, 3 and 5
        devices): 1.7, 2.8, 3.6 and 6.5, about 1.25 per device. On a shared host the devices
        training whole models compete too: with one of three devices split the edge measured
        3.7, and three times that for all three over-prices them (the safe side).
        """
        measured = {n: _median(f) for n, f in self._queue.items() if f}
        known = {n: q for n, q in measured.items() if q is not None}
        if not known or at_once < 1:
            return None
        counts = sorted(known)
        if at_once in known:
            return known[at_once]
        if not counts[0] < at_once < counts[-1]:
            nearest = counts[-1] if at_once > counts[-1] else counts[0]
            return known[nearest] * at_once / nearest
        above = next(n for n in counts if n > at_once)
        below = max(n for n in counts if n < at_once)
        share = (at_once - below) / (above - below)
        return known[below] + share * (known[above] - known[below])

    @staticmethod
    def _own(samples: _DeviceSamples) -> DeviceOverheads:
        return DeviceOverheads(
            exchange_s=_median(samples.exchange),
            split_compute_s=_median(samples.split_compute),
            round_s=_median(samples.round),
        )


def _median(values: Iterable[float]) -> float | None:
    """The median, never below zero (a cost the model over-prices is not a negative cost)."""
    items = list(values)
    return max(statistics.median(items), 0.0) if items else None


def _median_of(values: Iterable[float | None]) -> float | None:
    return _median(v for v in values if v is not None)
