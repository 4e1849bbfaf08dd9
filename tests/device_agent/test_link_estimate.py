"""The link throughput estimate: smoothing, sample counts, and small messages ignored."""

from __future__ import annotations

import pytest

from device_agent.link_estimate import MIN_SAMPLE_BYTES, LinkEstimate, ThroughputEstimate


def test_first_sample_is_taken_as_is_then_smoothed():
    estimate = ThroughputEstimate(smoothing=0.5)
    estimate.add(1_000_000, 0.4)  # 20 Mbit/s
    assert estimate.bps == pytest.approx(20e6)
    estimate.add(1_000_000, 0.8)  # 10 Mbit/s
    assert estimate.bps == pytest.approx(15e6)
    assert estimate.samples == 2


def test_converges_to_a_steady_rate():
    estimate = ThroughputEstimate()
    estimate.add(500_000, 0.1)
    for _ in range(30):
        estimate.add(500_000, 0.2)
    assert estimate.bps == pytest.approx(20e6, rel=1e-3)


def test_small_or_instant_transfers_do_not_count():
    estimate = ThroughputEstimate()
    estimate.add(MIN_SAMPLE_BYTES - 1, 0.001)
    estimate.add(1_000_000, 0.0)
    assert estimate.bps is None
    assert estimate.samples == 0


def test_a_real_change_of_link_is_taken_at_once():
    estimate = ThroughputEstimate()
    for _ in range(10):
        estimate.add(500_000, 0.1)  # 40 Mbit/s
    for _ in range(3):
        estimate.add(500_000, 2.0)  # 2 Mbit/s
    assert estimate.bps == pytest.approx(2e6)


def test_one_slow_sample_is_only_smoothed_in():
    estimate = ThroughputEstimate()
    for _ in range(10):
        estimate.add(500_000, 0.1)
    estimate.add(500_000, 2.0)
    estimate.add(500_000, 0.1)
    assert estimate.bps is not None
    assert estimate.bps > 20e6


def test_a_serving_device_counts_a_raw_images_transfer():
    """Serving sends one request's activation at a time: a 12 kB image at 4 Mbit/s counts
    with serving's floor, not with training's."""
    from serving.device import SERVE_MIN_SAMPLE_BYTES

    training, serving = LinkEstimate.new(), LinkEstimate.new(SERVE_MIN_SAMPLE_BYTES)
    for estimate in (training, serving):
        estimate.uplink.add(12_288, 12_288 * 8 / 4e6)
    assert training.uplink.bps is None
    assert serving.uplink.bps == pytest.approx(4e6)
