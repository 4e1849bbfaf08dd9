"""Application-level link shaping: a token bucket per direction.

Where the testbed cannot shape real links (no root, no tc), an emulated device's MQTT link
delays what it sends and what it receives so that, seen from the application, bytes cross the
link at the emulated rate. Less faithful than tc (TCP itself is not slowed), but the timing the
agent measures and reports is the emulated link's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


class TokenBucket:
    """Bytes may pass at ``rate_bps`` on average, in bursts of up to ``burst_bytes``.

    The default burst is one Ethernet frame: a larger one lets every message after a pause
    outrun the emulated rate (a 16 KiB burst made 131 kB messages 10% faster).
    """

    def __init__(self, rate_bps: float, burst_bytes: int = 1500) -> None:
        if rate_bps <= 0 or burst_bytes <= 0:
            raise ValueError("rate_bps and burst_bytes must be positive")
        self.rate_bps = rate_bps
        self.burst_bytes = burst_bytes
        self._tokens = float(burst_bytes)
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()  # one transfer at a time, like a real link

    def set_rate(self, rate_bps: float) -> None:
        if rate_bps <= 0:
            raise ValueError("rate_bps must be positive")
        self._refill()
        self.rate_bps = rate_bps

    def delay_for(self, size_bytes: int) -> float:
        """Seconds until ``size_bytes`` may pass, taking the tokens now (no waiting)."""
        self._refill()
        self._tokens -= size_bytes
        return max(0.0, -self._tokens * 8 / self.rate_bps)

    async def transfer(self, size_bytes: int) -> None:
        """Wait as long as sending ``size_bytes`` over the emulated link takes."""
        async with self._lock:
            delay = self.delay_for(size_bytes)
            if delay > 0:
                await asyncio.sleep(delay)

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(
            float(self.burst_bytes), self._tokens + (now - self._updated) * self.rate_bps / 8
        )
        self._updated = now


@dataclass
class LinkShaper:
    """The two directions of an emulated link."""

    uplink: TokenBucket
    downlink: TokenBucket

    @classmethod
    def at(cls, uplink_bps: float, downlink_bps: float | None = None) -> LinkShaper:
        return cls(TokenBucket(uplink_bps), TokenBucket(downlink_bps or uplink_bps))

    def set_rates(self, uplink_bps: float, downlink_bps: float | None = None) -> None:
        self.uplink.set_rate(uplink_bps)
        self.downlink.set_rate(downlink_bps or uplink_bps)
