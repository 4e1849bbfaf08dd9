"""Running an edge service and device agents in one event loop against a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from broker import LocalBroker
from device_agent import DeviceAgent, DeviceSettings
from edge_service import EdgeService, EdgeSettings, RunReport
from transport import MqttSettings


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
        registration_timeout_s=30,
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
