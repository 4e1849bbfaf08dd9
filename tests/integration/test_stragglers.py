"""A straggler never stalls a round: at the deadline it hands in its partial work."""

from __future__ import annotations

import time

from device_agent import DeviceAgent
from edge_service import EdgeService
from tests.integration.helpers import device_settings, edge_settings, train


async def test_slow_device_is_closed_at_the_deadline_and_counts_by_its_samples(mosquitto):
    settings = edge_settings(
        mosquitto, rounds=2, min_devices=2, batch_size=16, split=2,
        # The cap, whatever the plan predicts, sets the deadline here: 2 s per round.
        deadline_floor_s=1.0, deadline_slack=1.0, round_timeout_s=2.0, close_grace_s=5.0,
    )  # fmt: skip
    edge = EdgeService(settings)
    fast = DeviceAgent(device_settings(mosquitto, 0, 2))
    # An emulated Raspberry Pi: about 40x slower than this host, so it cannot finish in time.
    slow = DeviceAgent(device_settings(mosquitto, 1, 2, profile="raspberry-pi-3b+"))
    began = time.perf_counter()
    report = await train(edge, [fast, slow])
    elapsed = time.perf_counter() - began

    planned = -(-len(slow.data) // 16)
    for round_report in report.rounds:
        assert round_report.devices["dev-0"].status == "ok"
        straggler = round_report.devices["dev-1"]
        assert straggler.status == "straggler"
        assert 0 < straggler.batches < planned  # partial work, counted by its samples
        # Counted by the samples it processed (an epoch's last batch may be short).
        assert (straggler.batches - 1) * 16 < straggler.samples <= straggler.batches * 16
        assert round_report.duration_s < 2.0 + 5.0 + 3.0  # deadline + grace + evaluation
    assert elapsed < 60
    assert report.final_accuracy is not None
    assert report.final_accuracy > 0.5
