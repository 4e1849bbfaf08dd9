"""The token bucket lets bytes through at its rate, and follows rate changes."""

from __future__ import annotations

import time

import pytest

from transport.shaping import LinkShaper, TokenBucket


def test_delay_matches_the_rate_beyond_the_burst():
    bucket = TokenBucket(rate_bps=8e6, burst_bytes=1000)  # 1 MB/s
    assert bucket.delay_for(1000) == pytest.approx(0.0, abs=1e-3)
    assert bucket.delay_for(500_000) == pytest.approx(0.5, rel=0.01)


def test_rate_changes_apply_to_later_transfers():
    bucket = TokenBucket(rate_bps=8e6, burst_bytes=1)
    bucket.delay_for(1)
    bucket.set_rate(80e6)
    assert bucket.delay_for(1_000_000) == pytest.approx(0.1, rel=0.02)


async def test_transfers_take_the_emulated_time():
    shaper = LinkShaper.at(uplink_bps=16e6)  # 2 MB/s, downlink the same
    began = time.perf_counter()
    for _ in range(4):
        await shaper.uplink.transfer(100_000)
    elapsed = time.perf_counter() - began
    assert 0.18 <= elapsed <= 0.4  # 400 kB at 2 MB/s, less the initial burst


def test_bad_rates_are_refused():
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)
