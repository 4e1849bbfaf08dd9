"""A straggler never stalls a round: at the deadline it hands in its partial work."""

from __future__ import annotations

import asyncio

from device_agent import DeviceAgent
from edge_service import EdgeService
from tests.integration.helpers import device_settings, edge_settings, emulated_agent, train

# Every round's deadline, whatever the plan predicts (floor = cap). The emulated Pi cannot
# finish its share in it on any host: its compute is paced to the Pi's small CNN times (about
# 20 ms a batch of 16, from the board's fitted rates), slowed tenfold by the time scale, so
# about 9 s for its 45 batches; the host's own device must: 0.2 s here idle, about 1 s beside
# six CPU hogs.
DEADLINE = {"deadline_floor_s": 3.0, "deadline_slack": 1.0, "round_timeout_s": 3.0}
# (The Pi used to be paced by its slowdown against this host on VGG5, which made a small model
# on it slower than its FLOPs say; the slowdown is now explicit.)
SLOW_PI = {"profile": "raspberry-pi-3b+", "time_scale": 0.1}


async def test_slow_device_is_closed_at_the_deadline_and_counts_by_its_samples(mosquitto):
    settings = edge_settings(
        mosquitto, rounds=2, min_devices=2, batch_size=16, split=2, close_grace_s=5.0,
        **DEADLINE,
    )  # fmt: skip
    edge = EdgeService(settings)
    fast = DeviceAgent(device_settings(mosquitto, 0, 2))
    # An emulated Raspberry Pi: far slower than this host, so it cannot finish in time.
    slow = emulated_agent(device_settings(mosquitto, 1, 2, **SLOW_PI))
    report = await train(edge, [fast, slow])

    planned = -(-slow.trainer.samples // 16)
    for round_report in report.rounds:
        assert round_report.devices["dev-0"].status == "ok"
        straggler = round_report.devices["dev-1"]
        assert straggler.status == "straggler"
        # The round did not wait for it: closed with its work unfinished, and its partial part
        # (a straggler's, not a late one's) came within the grace.
        assert 0 < straggler.batches < planned
        # Counted by the samples it processed (an epoch's last batch may be short).
        assert (straggler.batches - 1) * 16 < straggler.samples <= straggler.batches * 16
    assert report.final_accuracy is not None
    assert report.final_accuracy > 0.5
    assert all(r.devices["dev-1"].contributed for r in report.rounds)
    assert all(r.discarded_batches == 0 for r in report.rounds)


async def test_a_part_that_never_arrives_is_late_and_its_steps_are_counted_as_discarded(
    mosquitto,
):
    settings = edge_settings(
        mosquitto, rounds=1, min_devices=2, batch_size=16, split=2, close_grace_s=1.0,
        **DEADLINE,
    )  # fmt: skip
    edge = EdgeService(settings)
    fast = DeviceAgent(device_settings(mosquitto, 0, 2))
    slow = emulated_agent(device_settings(mosquitto, 1, 2, **SLOW_PI))

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
    assert edge.edge_status("finished").last_round["dev-1"] == "late"  # the retained status too


async def test_a_partial_part_that_does_not_count_is_late(mosquitto):
    settings = edge_settings(
        mosquitto, rounds=1, min_devices=2, batch_size=16, split=2, count_partial=False,
        close_grace_s=5.0, **DEADLINE,
    )  # fmt: skip
    edge = EdgeService(settings)
    fast = DeviceAgent(device_settings(mosquitto, 0, 2))
    slow = emulated_agent(device_settings(mosquitto, 1, 2, **SLOW_PI))
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
    backward = failing.trainer.device_trainer.backward
    calls: list[int] = []

    def backward_failing_once(grad):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("out of memory (simulated)")
        return backward(grad)

    failing.trainer.device_trainer.backward = backward_failing_once  # type: ignore[method-assign]
    report = await train(edge, [steady, failing])

    first = report.rounds[0].devices["dev-1"]
    assert (first.status, first.contributed) == ("aborted", False)
    assert first.discarded_batches == first.batches >= 4  # the edge applied them; all thrown away
    assert [r.devices["dev-1"].status for r in report.rounds[1:]] == ["ok", "ok"]
