"""A device killed mid-round leaves the round at once (its MQTT will, confirmed by an unanswered
ping); training goes on."""

from __future__ import annotations

import asyncio
import sys
import time

from device_agent import DeviceAgent
from edge_service import EdgeService
from tests.integration.helpers import HANG_S, device_settings, edge_settings, wait_for_connected


async def test_killed_device_is_dropped_at_once_and_training_completes(mosquitto):
    settings = edge_settings(
        mosquitto, rounds=2, min_devices=2, batch_size=8, batches_per_round=150,
        round_timeout_s=120, liveness_timeout_s=1.0,
    )  # fmt: skip
    edge = EdgeService(settings)
    survivor = DeviceAgent(device_settings(mosquitto, 0, 2))
    victim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ares", "device", "--broker", mosquitto.url, "--id", "dev-1",
        "--shard", "1/2", "--torch-threads", "1",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    drop_latency_s: list[float] = []

    async def kill_mid_round() -> None:
        while True:
            runner = edge.current_round
            slot = runner.devices.get("dev-1") if runner else None
            if slot is not None and slot.session is not None and slot.session.next_seq >= 10:
                break
            await asyncio.sleep(0.01)
        victim.kill()
        killed_at = time.perf_counter()
        await slot.result
        drop_latency_s.append(time.perf_counter() - killed_at)
        print(f"device death to leaving the round: {drop_latency_s[0] * 1e3:.1f} ms")

    try:
        # The edge's registration clock starts once the child process is up (importing torch
        # takes a busy host a while), not when it was launched.
        await wait_for_connected(mosquitto, {"dev-1": victim})
        async with asyncio.timeout(HANG_S), asyncio.TaskGroup() as tasks:
            tasks.create_task(survivor.run())
            tasks.create_task(kill_mid_round())
            report = await edge.run()
    finally:
        if victim.returncode is None:
            victim.kill()
        await victim.wait()

    round_one = report.rounds[0]
    assert round_one.devices["dev-1"].status == "dropped"
    assert round_one.devices["dev-0"].status == "ok"
    # The will arrives as soon as the broker sees the connection die, and the ping it makes the
    # edge send goes unanswered: dropped then, not after the silence of 3 batch timeouts.
    assert drop_latency_s[0] < 3 * settings.batch_timeout_s
    assert edge.counters["liveness.pings"] >= 1
    assert edge.counters["liveness.refuted"] == 0
    assert set(report.rounds[1].devices) == {"dev-0"}
    assert report.final_accuracy is not None
    assert report.final_accuracy > 0.5
