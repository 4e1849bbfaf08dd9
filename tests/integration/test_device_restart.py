"""A device agent restarted mid-run rejoins without profiling again (its profile is cached by
model fingerprint and host) and trains the rounds that are left."""

from __future__ import annotations

import asyncio

import device_agent.trainer
from device_agent import DeviceAgent
from edge_service import EdgeService
from tests.integration.helpers import device_settings, edge_settings, wait_until


async def test_a_restarted_agent_reuses_its_profile_and_trains_again(
    mosquitto, tmp_path, monkeypatch
):
    profiled: list[str] = []
    measure = device_agent.trainer.profile_blocks  # type: ignore[attr-defined]

    def counting_profile(spec, batch_size):
        profiled.append(spec.name)
        return measure(spec, batch_size)

    monkeypatch.setattr(device_agent.trainer, "profile_blocks", counting_profile)
    settings = device_settings(mosquitto, 0, 1, profile_cache_dir=tmp_path)
    edge = EdgeService(edge_settings(mosquitto, rounds=4, split=2, batches_per_round=20))
    first, second = DeviceAgent(settings), DeviceAgent(settings)

    async with asyncio.timeout(240), asyncio.TaskGroup() as tasks:
        running = tasks.create_task(first.run())
        edge_run = tasks.create_task(edge.run())
        await wait_until(lambda: first.rounds_done >= 1)
        running.cancel()  # the process ends; a new one (a new instance) starts
        tasks.create_task(second.run())
        report = await edge_run

    assert profiled == ["small_cnn"]  # the restarted agent took the cached profile
    assert second.rounds_done >= 1
    assert report.rounds[-1].devices["dev-0"].status == "ok"
