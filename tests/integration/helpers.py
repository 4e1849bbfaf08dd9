"""Running an edge service and device agents in one event loop against a real broker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ares.cli import device_environment
from broker import LocalBroker
from device_agent import DeviceAgent, DeviceSettings
from edge_service import EdgeService, EdgeSettings, RunReport
from schemas import DeviceChannel, Topics
from transport import MqttLink, MqttSettings

# How long a wait may take before the test calls it a hang. Never a pass criterion: every wait
# with this bound returns at the event it waits for (a device registered, its profile in, a
# child process connected), however long a busy host takes to get there.
HANG_S = 600.0


def mqtt(broker: LocalBroker, **changes: Any) -> MqttSettings:
    return MqttSettings(url=broker.url, **changes)


def edge_settings(broker: LocalBroker, **changes: Any) -> EdgeSettings:
    fields: dict[str, Any] = dict(
        mqtt=mqtt(broker),
        policy="sl",  # fixed cuts unless a test asks for planning
        checkpoint=None,  # tests that resume name their own
        rounds=2,
        min_devices=1,
        batch_size=32,
        # Hang guards only: the edge stops waiting as soon as the devices and their profiles are
        # in. An edge started beside child-process devices waits for them first
        # (wait_for_connected), so its clock never times their start-up.
        registration_timeout_s=HANG_S,
        profile_timeout_s=HANG_S,
        batch_timeout_s=10,
        round_timeout_s=120,
        torch_threads=1,
        compute_workers=2,
    )
    return EdgeSettings(**{**fields, **changes})


def device_settings(broker: LocalBroker, index: int, count: int, **changes: Any) -> DeviceSettings:
    fields: dict[str, Any] = dict(
        mqtt=mqtt(broker),
        device_id=f"dev-{index}",
        shard_index=index,
        num_shards=count,
        exit_on_finish=True,
        torch_threads=1,
    )
    return DeviceSettings(**{**fields, **changes})


def emulated_agent(settings: DeviceSettings) -> DeviceAgent:
    """An agent wired as ``ares device`` wires it: on the testbed's emulation of the board,
    battery or link its settings ask for."""
    return DeviceAgent(settings, environment=device_environment(settings))


async def train(edge: EdgeService, agents: list[DeviceAgent], timeout_s: float = 240) -> RunReport:
    """Run the edge and the agents until the edge finishes and every agent has exited."""
    async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as tasks:
        for agent in agents:
            tasks.create_task(agent.run())
        report = await edge.run()
    return report


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """Poll the services' state (tests only: production code waits on events)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polling another task's plain attributes
            await asyncio.sleep(0.005)


async def wait_for_connected(
    broker: LocalBroker,
    processes: Mapping[str, asyncio.subprocess.Process],
    logs: Path | None = None,
    timeout_s: float = HANG_S,
) -> float:
    """Wait until each device process (by device id) is connected to the broker: its retained
    status says it is up. A child process starts slowly on a busy host (importing torch, loading
    its data); an edge started before that would be timing the host, not the registration.
    Fails at once if a process exits first (with the tail of ``logs/<device id>.log``).
    Returns the seconds waited."""
    began = time.perf_counter()
    topics = Topics()
    wanted = {topics.device(d, DeviceChannel.STATUS): d for d in processes}
    connected: set[str] = set()
    exits = {asyncio.ensure_future(p.wait()): d for d, p in processes.items()}
    try:
        async with (
            asyncio.timeout(timeout_s),
            MqttLink(mqtt(broker), "test-device-watcher", [(t, 1) for t in wanted]) as watcher,
        ):
            while connected != set(processes):
                receive = asyncio.ensure_future(watcher.receive())
                await asyncio.wait([receive, *exits], return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():
                    receive.cancel()
                    exited = next(d for e, d in exits.items() if e.done())
                    log = logs / f"{exited}.log" if logs else None
                    tail = log.read_text()[-2000:] if log and log.exists() else "(no log)"
                    raise AssertionError(
                        f"device {exited} exited ({processes[exited].returncode}) before "
                        f"connecting:\n{tail}"
                    )
                message = receive.result()
                if message.payload and json.loads(message.payload).get("state") != "offline":
                    connected.add(wanted[message.topic])
    finally:
        for waiting in exits:
            waiting.cancel()
    return time.perf_counter() - began
