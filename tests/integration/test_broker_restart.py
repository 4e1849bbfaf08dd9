"""Mosquitto killed and restarted mid-round: everyone reconnects, training completes, and every
batch step is applied exactly once."""

from __future__ import annotations

import asyncio
import time

from device_agent import DeviceAgent
from edge_service import EdgeService
from tests.integration.helpers import device_settings, edge_settings, mqtt, wait_until

FAST_RECONNECT = {"reconnect_min_s": 0.1, "reconnect_max_s": 1.0}


async def test_training_survives_a_broker_restart_mid_round(mosquitto):
    settings = edge_settings(
        mosquitto, rounds=3, min_devices=2, batch_size=16, split=2, batch_timeout_s=3.0,
        deadline_floor_s=60.0, mqtt=mqtt(mosquitto, **FAST_RECONNECT),
    )  # fmt: skip
    edge = EdgeService(settings)
    agents = [
        DeviceAgent(device_settings(mosquitto, i, 2, mqtt=mqtt(mosquitto, **FAST_RECONNECT)))
        for i in range(2)
    ]
    recovery_s: list[float] = []

    async def restart_broker_mid_round() -> None:
        def mid_round_two() -> bool:
            runner = edge.current_round
            return (
                runner is not None
                and runner.round_no == 2
                and all(d.session is not None and d.session.next_seq >= 5
                        for d in runner.devices.values())
            )  # fmt: skip

        await wait_until(mid_round_two)
        runner = edge.current_round
        assert runner is not None
        mosquitto.kill()
        killed = time.perf_counter()
        await asyncio.sleep(0.5)
        mosquitto.restart()
        session = runner.devices["dev-0"].session
        assert session is not None
        applied = session.next_seq
        await wait_until(lambda: session.next_seq > applied)  # training moves again
        recovery_s.append(time.perf_counter() - killed)
        print(f"broker killed to training moving again: {recovery_s[0]:.2f} s")

    async with asyncio.timeout(240), asyncio.TaskGroup() as tasks:
        for agent in agents:
            tasks.create_task(agent.run())
        tasks.create_task(restart_broker_mid_round())
        report = await edge.run()

    assert [r.round for r in report.rounds] == [1, 2, 3]
    for round_report in report.rounds:
        for device_id, device in round_report.devices.items():
            planned = -(-next(a.trainer.samples for a in agents if a.device_id == device_id) // 16)
            assert device.status == "ok", (round_report.round, device_id, device.status)
            # No lost and no duplicated step: the edge applied each planned batch exactly once.
            assert device.batches == planned
    assert edge.counters["batch_count_mismatch"] == 0
    assert recovery_s
    assert report.final_accuracy is not None
    assert report.initial_accuracy is not None
    assert report.final_accuracy > report.initial_accuracy + 0.3


async def test_a_gradient_lost_with_the_broker_is_recovered_at_reconnect(mosquitto):
    """The broker acknowledged a gradient and died before delivering it: the device re-sends
    its batch as soon as it (or the edge) is back, not after its batch timeout."""
    fast = mqtt(mosquitto, **FAST_RECONNECT)
    settings = edge_settings(
        mosquitto, rounds=2, batch_size=16, split=2, batch_timeout_s=60.0,
        deadline_floor_s=120.0, mqtt=fast,
    )  # fmt: skip
    edge = EdgeService(settings)
    agent = DeviceAgent(device_settings(mosquitto, 0, 1, mqtt=fast))
    publish = edge.outbox.publish_grad
    lost: list[int] = []

    async def lose_one_gradient(device_id: str, payload: bytes) -> None:
        runner = edge.current_round
        session = runner.devices[device_id].session if runner else None
        if not lost and runner and runner.round_no == 1 and session and session.next_seq >= 5:
            lost.append(session.next_seq - 1)  # acknowledged, then gone with the broker
            return
        await publish(device_id, payload)

    edge.outbox.publish_grad = lose_one_gradient  # type: ignore[method-assign]
    stall_s: list[float] = []

    async def restart_broker_after_the_loss() -> None:
        await wait_until(lambda: bool(lost))
        runner = edge.current_round
        assert runner is not None
        session = runner.devices["dev-0"].session
        assert session is not None
        applied = session.next_seq
        mosquitto.kill()
        killed = time.perf_counter()
        await asyncio.sleep(1.0)
        mosquitto.restart()
        # Before the fix this waited out the device's 60 s batch timeout.
        await wait_until(lambda: session.next_seq > applied, timeout_s=45)
        stall_s.append(time.perf_counter() - killed)
        print(f"broker killed (gradient lost) to training moving again: {stall_s[0]:.2f} s")

    async with asyncio.timeout(240), asyncio.TaskGroup() as tasks:
        tasks.create_task(agent.run())
        tasks.create_task(restart_broker_after_the_loss())
        report = await edge.run()

    assert stall_s
    planned = -(-agent.trainer.samples // 16)
    for round_report in report.rounds:
        device = round_report.devices["dev-0"]
        assert (device.status, device.batches) == ("ok", planned), round_report.round
    assert edge.counters["batch_count_mismatch"] == 0
