"""LoopLagMonitor: statistics on known samples, and the probe on real loops (asyncio, uvloop)."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from edge_service.loop_lag import LoopLagMonitor, percentile


def test_percentile_is_nearest_rank() -> None:
    ordered = [float(i) for i in range(1, 101)]
    assert percentile(ordered, 0.5) == 50.0
    assert percentile(ordered, 0.99) == 99.0
    assert percentile(ordered, 1.0) == 100.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) == 0.0


def test_stats_of_known_samples() -> None:
    monitor = LoopLagMonitor(window=100, threshold_s=0.02)
    for i in range(100):
        monitor.record(i / 1000)  # 0 .. 99 ms
    stats = monitor.stats()
    assert stats.samples == 100
    assert stats.p50_s == pytest.approx(0.049)
    assert stats.p99_s == pytest.approx(0.098)
    assert stats.max_s == pytest.approx(0.099)
    assert stats.over_threshold == 79  # 21 .. 99 ms
    assert monitor.quantiles() == {"0.5": stats.p50_s, "0.99": stats.p99_s, "1": stats.max_s}


def test_window_is_bounded_but_totals_cover_the_run() -> None:
    monitor = LoopLagMonitor(window=10, threshold_s=0.02)
    monitor.record(0.5)  # an early spike, later pushed out of the window
    for _ in range(20):
        monitor.record(0.001)
    stats = monitor.stats()
    assert stats.samples == 10
    assert stats.max_s == 0.001
    assert stats.over_threshold == 0
    assert (stats.total_samples, stats.total_over_threshold, stats.total_max_s) == (21, 1, 0.5)


def test_run_wide_percentiles_come_from_the_histogram() -> None:
    monitor = LoopLagMonitor(window=10)
    for _ in range(98):
        monitor.record(0.001)
    monitor.record(0.1)
    monitor.record(0.3)
    stats = monitor.stats()
    assert 0.001 <= stats.total_p50_s < 0.001 * 1.19  # within one bucket above the truth
    assert 0.1 <= stats.total_p99_s < 0.1 * 1.19
    assert stats.total_max_s == 0.3
    huge = LoopLagMonitor()
    huge.record(100.0)  # past the last bucket: the maximum is exact
    assert huge.stats().total_p99_s == 100.0


def test_since_returns_what_a_collector_has_not_seen() -> None:
    monitor = LoopLagMonitor(window=5)
    assert monitor.since(0) == []
    for i in range(3):
        monitor.record(float(i))
    assert monitor.since(0) == [0.0, 1.0, 2.0]
    assert monitor.since(2) == [2.0]
    for i in range(3, 8):
        monitor.record(float(i))
    # Samples 0..2 fell out of the window: a slow collector gets what is left.
    assert monitor.since(1) == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert monitor.since(6) == [6.0, 7.0]
    assert monitor.since(8) == []


def test_empty_monitor_has_no_quantiles() -> None:
    monitor = LoopLagMonitor()
    assert monitor.quantiles() == {}
    assert monitor.stats().samples == 0


@pytest.mark.parametrize("kwargs", [{"interval_s": 0}, {"window": 0}, {"threshold_s": -1}])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        LoopLagMonitor(**kwargs)  # type: ignore[arg-type]


async def _block_the_loop_once() -> LoopLagMonitor:
    monitor = LoopLagMonitor(interval_s=0.005, threshold_s=0.05)
    async with monitor:
        assert monitor.running
        await asyncio.sleep(0.1)
        time.sleep(0.15)  # noqa: ASYNC251 (a handler that blocks the loop: what we measure)
        await asyncio.sleep(0.1)
    assert not monitor.running
    return monitor


def _check_one_spike(monitor: LoopLagMonitor) -> None:
    stats = monitor.stats()
    assert stats.total_samples >= 10
    # The probe due during the block woke up late by most of it, once (not once per interval).
    assert 0.1 <= stats.max_s < 1.0
    assert stats.total_over_threshold >= 1
    assert stats.over_threshold <= 3  # a loaded CI machine may add a late wake-up or two
    assert stats.p50_s < 0.05


async def test_probe_sees_a_blocked_loop() -> None:
    _check_one_spike(await _block_the_loop_once())


def test_probe_works_on_uvloop() -> None:
    # The edge runs on uvloop, whose clock and timers have millisecond resolution.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        _check_one_spike(runner.run(_block_the_loop_once()))


async def test_monitor_stops_sampling_on_exit() -> None:
    monitor = LoopLagMonitor(interval_s=0.005)
    async with monitor:
        await asyncio.sleep(0.05)
    taken = monitor.total_samples
    await asyncio.sleep(0.05)
    assert monitor.total_samples == taken > 0


async def test_monitor_cannot_be_entered_twice() -> None:
    monitor = LoopLagMonitor()
    async with monitor:
        with pytest.raises(RuntimeError, match="already running"):
            await monitor.__aenter__()
