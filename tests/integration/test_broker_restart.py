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
            runner = edge._round
            return (
                runner is not None
                and runner.round_no == 2
                and all(d.session is not None and d.session.next_seq >= 5
                        for d in runner.devices.values())
            )  # fmt: skip

        await wait_until(mid_round_two)
        runner = edge._round
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
            planned = -(-next(len(a.data) for a in agents if a.device_id == device_id) // 16)
            assert device.status == "ok", (round_report.round, device_id, device.status)
            # No lost and no duplicated step: the edge applied each planned batch exactly once.
            assert device.batches == planned
    assert edge.counters["batch_count_mismatch"] == 0
    assert recovery_s
    assert report.final_accuracy is not None
    assert report.initial_accuracy is not None
    assert report.final_accuracy > report.initial_accuracy + 0.3
