"""How late the event loop runs what is due: a periodic probe of scheduled versus actual wake-up.

A task sleeps ``interval_s`` again and again; each time it wakes, the difference between when it
asked to wake and when it did is one sample of the loop's lag: how long any callback that became
ready at that moment had to wait (a blocking handler, a long GIL hold by a compute thread, a
burst of messages). Samples go into a bounded window (exact percentiles of the recent past) and
into a histogram that never resets (the whole run: percentiles to within one bucket, +19%).

A loop blocked for 300 ms yields one sample of ~300 ms, not six: the next probe is scheduled from
the late wake-up. Percentiles are therefore over probes ("1% of probes waited longer than p99").
"""

from __future__ import annotations

import asyncio
import math
import time
from bisect import bisect_left
from collections import deque
from dataclasses import asdict, dataclass
from itertools import islice
from types import TracebackType
from typing import Self

from transport.tasks import cancel_and_wait

DEFAULT_INTERVAL_S = 0.05  # 20 probes a second: negligible work, fine enough for 20 ms targets
DEFAULT_WINDOW = 1200  # one minute of probes at the default interval
DEFAULT_THRESHOLD_S = 0.02
# Run-wide histogram: upper bounds from 0.25 ms doubling every 4 buckets to ~16 s (+ overflow).
BUCKET_BOUNDS_S = tuple(0.00025 * 2 ** (i / 4) for i in range(65))


@dataclass(frozen=True)
class LagStats:
    """Lag of the recent window (``samples`` probes) and of the whole run (``total_*``)."""

    samples: int
    p50_s: float
    p99_s: float
    max_s: float
    over_threshold: int  # probes in the window later than the threshold
    threshold_s: float
    total_samples: int
    total_p50_s: float  # from the histogram: the upper bound of the bucket holding it
    total_p99_s: float
    total_max_s: float
    total_over_threshold: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class LoopLagMonitor:
    """Samples the running loop's lag while entered (``async with monitor:``)."""

    def __init__(
        self,
        interval_s: float = DEFAULT_INTERVAL_S,
        window: int = DEFAULT_WINDOW,
        threshold_s: float = DEFAULT_THRESHOLD_S,
    ) -> None:
        if interval_s <= 0 or window < 1 or threshold_s < 0:
            raise ValueError("need interval_s > 0, window >= 1 and threshold_s >= 0")
        self.interval_s = interval_s
        self.threshold_s = threshold_s
        self._window: deque[float] = deque(maxlen=window)
        self._histogram = [0] * (len(BUCKET_BOUNDS_S) + 1)
        self.total_samples = 0
        self.total_over_threshold = 0
        self.total_max_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("this LoopLagMonitor is already running")
        self._task = asyncio.create_task(self._probe(), name="loop-lag-monitor")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task, within_s=1.0)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _probe(self) -> None:
        # perf_counter, not loop.time(): uvloop's clock only has millisecond resolution.
        while True:
            due = time.perf_counter() + self.interval_s
            await asyncio.sleep(self.interval_s)
            # A timer may fire a fraction of a millisecond early (uvloop rounds to ms).
            self.record(max(0.0, time.perf_counter() - due))

    def record(self, lag_s: float) -> None:
        """Add one sample (the probe's; public so a test can feed known values)."""
        self._window.append(lag_s)
        self._histogram[bisect_left(BUCKET_BOUNDS_S, lag_s)] += 1
        self.total_samples += 1
        if lag_s > self.threshold_s:
            self.total_over_threshold += 1
        self.total_max_s = max(self.total_max_s, lag_s)

    def stats(self) -> LagStats:
        """Percentiles of the window, and the run's totals. Sorts the window: O(window)."""
        ordered = sorted(self._window)
        return LagStats(
            samples=len(ordered),
            p50_s=percentile(ordered, 0.5),
            p99_s=percentile(ordered, 0.99),
            max_s=ordered[-1] if ordered else 0.0,
            over_threshold=sum(1 for lag in ordered if lag > self.threshold_s),
            threshold_s=self.threshold_s,
            total_samples=self.total_samples,
            total_p50_s=self._run_percentile(0.5),
            total_p99_s=self._run_percentile(0.99),
            total_max_s=self.total_max_s,
            total_over_threshold=self.total_over_threshold,
        )

    def _run_percentile(self, fraction: float) -> float:
        rank = max(1, math.ceil(fraction * self.total_samples))
        seen = 0
        for bucket, count in enumerate(self._histogram):
            seen += count
            if seen >= rank:
                bound = BUCKET_BOUNDS_S[bucket] if bucket < len(BUCKET_BOUNDS_S) else math.inf
                return min(bound, self.total_max_s)
        return 0.0

    def quantiles(self) -> dict[str, float]:
        """Window quantiles in seconds keyed like Prometheus labels ("1" is the maximum);
        empty before the first probe."""
        if not self._window:
            return {}
        stats = self.stats()
        return {"0.5": stats.p50_s, "0.99": stats.p99_s, "1": stats.max_s}

    def since(self, index: int) -> list[float]:
        """Samples number ``index`` (0-based, counted over the run) onwards that are still in
        the window: a collector remembers ``total_samples`` and asks again later."""
        first_kept = self.total_samples - len(self._window)
        return list(islice(self._window, max(0, index - first_kept), None))
