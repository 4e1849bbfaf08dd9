"""A device that speaks protocol version 1 (the cut was "split" then) is answered in version 1."""

from __future__ import annotations

import asyncio

from edge_service import EdgeService, EdgeSettings
from schemas import DeviceChannel, Hello, Topics, decode_frame, to_json
from transport import MemoryBroker


async def test_a_version_1_device_gets_its_welcome_and_round_start_in_version_1():
    broker = MemoryBroker()
    edge = EdgeService(
        EdgeSettings(
            policy="sl", split=2, rounds=1, min_devices=1, checkpoint=None, torch_threads=1,
            profile_timeout_s=0.1, registration_timeout_s=60,
        ),
        connect=broker.connect,
    )  # fmt: skip
    topics = Topics()
    hello = Hello(
        device_id="old-0",
        instance="i",
        agent_version="0.1.0",
        samples=64,
        dataset="digits",
        input_shape=(1, 8, 8),
        num_classes=10,
    )
    ctrl = topics.device("old-0", DeviceChannel.CTRL)
    async with broker.connect("old-0", [(ctrl, 1)]) as device, asyncio.TaskGroup() as tasks:
        run = tasks.create_task(edge.run())
        await edge.ready.wait()
        await device.publish(topics.device("old-0", DeviceChannel.HELLO), to_json(hello, 1))
        metas = []
        async with asyncio.timeout(60):
            async for message in device.messages():
                metas.append(decode_frame(message.payload).meta)
                if metas[-1]["kind"] == "round_start":
                    break
        run.cancel()
    assert [m["kind"] for m in metas] == ["welcome", "round_start"]
    assert {m["v"] for m in metas} == {1}
    assert metas[1]["split"] == 2
    assert "cut" not in metas[1]
    assert edge.devices["old-0"].protocol == 1
