"""A straggler never stalls a round: at the deadline it hands in its partial work."""

from __future__ import annotations

import asyncio
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
    assert all(r.devices["dev-1"].contributed for r in report.rounds)
    assert all(r.discarded_batches == 0 for r in report.rounds)


async def test_a_part_that_never_arrives_is_late_and_its_steps_are_counted_as_discarded(
    mosquitto,
):
    settings = edge_settings(
        mosquitto, rounds=1, min_devices=2, batch_size=16, split=2,
        deadline_floor_s=1.0, deadline_slack=1.0, round_timeout_s=2.0, close_grace_s=1.0,
    )  # fmt: skip
    edge = EdgeService(settings)
    fast = DeviceAgent(device_settings(mosquitto, 0, 2))
    slow = DeviceAgent(device_settings(mosquitto, 1, 2, profile="raspberry-pi-3b+"))

    async def upload_lost(*_: object) -> None:  # as if the upload never got through
        await asyncio.Event().wait()

    slow._upload_weights = upload_lost  # type: ignore[method-assign,assignment]
    report = await train(edge, [fast, slow])

    (only,) = report.rounds
    late = only.devices["dev-1"]
    assert (late.status, late.contributed) == ("late", False)
    assert late.batches > 0
    assert late.discarded_batches == late.batches  # applied at the edge, never averaged
    assert only.discarded_batches == late.batches
    assert only.devices["dev-0"].contributed
    assert edge._status("finished").last_round["dev-1"] == "late"  # the retained status too


async def test_a_partial_part_that_does_not_count_is_late(mosquitto):
    settings = edge_settings(
        mosquitto, rounds=1, min_devices=2, batch_size=16, split=2, count_partial=False,
        deadline_floor_s=1.0, deadline_slack=1.0, round_timeout_s=2.0, close_grace_s=5.0,
    )  # fmt: skip
    edge = EdgeService(settings)
    fast = DeviceAgent(device_settings(mosquitto, 0, 2))
    slow = DeviceAgent(device_settings(mosquitto, 1, 2, profile="raspberry-pi-3b+"))
    report = await train(edge, [fast, slow])
    late = report.rounds[0].devices["dev-1"]
    assert (late.status, late.contributed) == ("late", False)
    assert late.discarded_batches == late.batches > 0


async def test_a_device_that_gives_up_is_aborted_and_trains_the_next_round(mosquitto):
    settings = edge_settings(
        mosquitto, rounds=3, min_devices=2, batch_size=16, split=2, batches_per_round=20
    )
    edge = EdgeService(settings)
    steady = DeviceAgent(device_settings(mosquitto, 0, 2))
    failing = DeviceAgent(device_settings(mosquitto, 1, 2))
    backward = failing.trainer.backward
    calls: list[int] = []

    def backward_failing_once(grad):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("out of memory (simulated)")
        return backward(grad)

    failing.trainer.backward = backward_failing_once  # type: ignore[method-assign]
    report = await train(edge, [steady, failing])

    first = report.rounds[0].devices["dev-1"]
    assert (first.status, first.contributed) == ("aborted", False)
    assert first.discarded_batches == first.batches >= 4  # the edge applied them; all thrown away
    assert [r.devices["dev-1"].status for r in report.rounds[1:]] == ["ok", "ok"]
