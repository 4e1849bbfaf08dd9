"""Throughput of the device's own link, estimated from its own transfers.

Uplink: a QoS 1 publish returns when the broker's PUBACK arrives, so a large activation frame's
publish time is its transfer time (plus one small packet back). Downlink: a batch's round trip
minus the uplink time and the edge's own time (which the gradient reports) is the gradient's
transfer time. Small messages are latency-bound, not bandwidth-bound, and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_SAMPLE_BYTES = 16 * 1024


SHIFT_SAMPLES = 3  # consecutive samples that establish a new level
SHIFT_FACTOR = 2.0  # how far from the average they must all be


@dataclass
class ThroughputEstimate:
    """A smoothed estimate of bits per second, with its sample count.

    An exponentially weighted moving average rides out noise; but when the last few samples all
    sit far from it (a link that really changed), the estimate jumps to their mean at once, so
    the next plan already sees the new link instead of a slow drift towards it.
    """

    smoothing: float = 0.3  # weight of the newest sample
    # Smaller transfers are not counted: they are latency-bound, not bandwidth-bound.
    min_sample_bytes: int = MIN_SAMPLE_BYTES
    bps: float | None = None
    samples: int = 0
    recent: list[float] = field(default_factory=list)

    def add(self, size_bytes: int, seconds: float) -> None:
        if size_bytes < self.min_sample_bytes or seconds <= 0:
            return
        sample = size_bytes * 8 / seconds
        self.samples += 1
        self.recent = [*self.recent[-(SHIFT_SAMPLES - 1) :], sample]
        if self.bps is None:
            self.bps = sample
        elif len(self.recent) == SHIFT_SAMPLES and self._shifted(self.bps):
            self.bps = sum(self.recent) / SHIFT_SAMPLES
        else:
            self.bps += self.smoothing * (sample - self.bps)

    def _shifted(self, average: float) -> bool:
        low = all(s < average / SHIFT_FACTOR for s in self.recent)
        high = all(s > average * SHIFT_FACTOR for s in self.recent)
        return low or high


@dataclass
class LinkEstimate:
    uplink: ThroughputEstimate
    downlink: ThroughputEstimate

    @classmethod
    def new(cls, min_sample_bytes: int = MIN_SAMPLE_BYTES) -> LinkEstimate:
        return cls(
            ThroughputEstimate(min_sample_bytes=min_sample_bytes),
            ThroughputEstimate(min_sample_bytes=min_sample_bytes),
        )
