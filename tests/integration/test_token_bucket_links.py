"""Without tc, a token bucket in the agent shapes its traffic and its estimates follow.

What holds however slow the host is: a message never crosses the bucket faster than the rate
allows beyond the bucket's burst, so no uplink sample (a publish, timed to its PUBACK) is
shorter than that, nor any batch's round trip less the edge's own time shorter than both
directions' shaped times; the estimates are made of these samples. A busy host only adds time,
so the samples fall below the rate, by as much as the host delays them: near the rate is asked
only of the transfer the host delayed least, which a shaper that holds traffic too long fails
on any host.
"""

from __future__ import annotations

from collections.abc import Callable

from device_agent.link_estimate import MIN_SAMPLE_BYTES, ThroughputEstimate
from edge_service import EdgeService
from tests.integration.helpers import device_settings, edge_settings, emulated_agent, train

UPLINK_BPS, DOWNLINK_BPS = 8e6, 16e6
NEAR = 0.85  # the least delayed transfer reaches this share of the rate
FRAME_BYTES = 1500


def recording(
    estimate: ThroughputEstimate, direction: str, samples: list[tuple[str, int, float]]
) -> Callable[[int, float], None]:
    """The estimate's ``add``, also noting each sample it counts, in order."""
    add = estimate.add

    def add_and_record(size_bytes: int, seconds: float) -> None:
        if size_bytes >= MIN_SAMPLE_BYTES and seconds > 0:
            samples.append((direction, size_bytes, seconds))
        add(size_bytes, seconds)

    return add_and_record


async def test_token_bucket_link_is_measured_at_its_rate(mosquitto, monkeypatch):
    settings = edge_settings(mosquitto, rounds=2, split=1, batches_per_round=10, batch_size=32)
    agent = emulated_agent(
        device_settings(
            mosquitto, 0, 1, link_mode="token-bucket", uplink_schedule="8", downlink_schedule="16"
        )
    )
    shaper = agent.environment.link.shaper
    assert shaper is not None
    assert (shaper.uplink.rate_bps, shaper.downlink.rate_bps) == (UPLINK_BPS, DOWNLINK_BPS)
    # Bursts of at most a frame (transport/shaping.py): a 16 KiB one let 131 kB messages run 10%
    # over the rate.
    up_burst, down_burst = shaper.uplink.burst_bytes, shaper.downlink.burst_bytes
    assert max(up_burst, down_burst) <= FRAME_BYTES
    samples: list[tuple[str, int, float]] = []
    for direction, estimate in (("up", agent.link.uplink), ("down", agent.link.downlink)):
        monkeypatch.setattr(estimate, "add", recording(estimate, direction, samples))

    report = await train(EdgeService(settings), [agent])

    device = report.rounds[-1].devices["dev-0"]
    up = [(size, s) for d, size, s in samples if d == "up"]
    down = [(size, s) for d, size, s in samples if d == "down"]
    # The agent adds a batch's two samples together: uplink, then downlink.
    batches = [
        (samples[i][1:], samples[i + 1][1:])
        for i in range(len(samples) - 1)
        if (samples[i][0], samples[i + 1][0]) == ("up", "down")
    ]
    print("token-bucket estimates:", device.uplink_mbps, device.downlink_mbps)
    print("fastest samples (Mbit/s):", max(n * 8 / s for n, s in up) / 1e6,
          max(n * 8 / s for n, s in down) / 1e6, "slowest:",
          min(n * 8 / s for n, s in up) / 1e6, min(n * 8 / s for n, s in down) / 1e6)  # fmt: skip
    assert device.link_mode == "token-bucket"
    assert device.uplink_mbps is not None
    assert device.downlink_mbps is not None
    assert batches

    def shaped_s(size: int, rate_bps: float, burst: int) -> float:
        """The least time ``size`` bytes take through the bucket: all but a burst at the rate."""
        return (size - burst) * 8 / rate_bps

    # Never faster than the rate beyond the burst, on any host. A publish returns at its PUBACK,
    # after the bucket let it through:
    for size, seconds in up:
        assert seconds >= shaped_s(size, UPLINK_BPS, up_burst), (size, seconds)
    # and so the uplink estimate, an average of these samples:
    largest_up = max(size for size, _ in up)
    bound_mbps = UPLINK_BPS * largest_up / (largest_up - up_burst) / 1e6
    assert device.uplink_mbps <= bound_mbps + 1e-3  # reported in Mbit/s to 3 decimals
    # The gradient can neither leave the edge before the activation came through the uplink
    # bucket nor reach the agent before the downlink bucket let it through. (A downlink sample
    # alone can come out a little short: the edge's time, subtracted from the round trip, may
    # start before the agent has the PUBACK that ends its uplink sample.)
    for (up_size, up_s), (down_size, down_s) in batches:
        least = shaped_s(up_size, UPLINK_BPS, up_burst)
        least += shaped_s(down_size, DOWNLINK_BPS, down_burst)
        assert up_s + down_s >= least, (up_s, down_s, least)

    # Near the rate when the host keeps up: load only adds time, so the fastest transfer is the
    # one least disturbed by the host. A bucket holding messages too long fails here anyway.
    assert max(size * 8 / s for size, s in up) >= NEAR * UPLINK_BPS
    assert max(size * 8 / s for size, s in down) >= NEAR * DOWNLINK_BPS
    # The reported estimates are made of these samples (to the 3 decimals of the report).
    for reported, measured in ((device.uplink_mbps, up), (device.downlink_mbps, down)):
        rates = [size * 8 / s / 1e6 for size, s in measured]
        assert min(rates) - 1e-3 <= reported <= max(rates) + 1e-3
