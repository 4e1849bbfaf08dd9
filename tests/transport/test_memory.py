"""The in-memory transport: MQTT routing rules, and the edge and agents training through it
without a broker (the transport seam; real-broker tests stay under tests/integration)."""

from __future__ import annotations

import asyncio

import pytest

from device_agent import DeviceAgent, DeviceSettings
from edge_service import EdgeService, EdgeSettings
from schemas import DeviceChannel, DeviceStatus, Topics, to_json
from transport import LastWill, MemoryBroker, topic_matches


@pytest.mark.parametrize(
    ("pattern", "topic", "matches"),
    [("a/b", "a/b", True), ("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/#", "a", True),
     ("a/#", "a/b/c", True), ("+/+/x", "a/b/x", True), ("a/b", "a/c", False), ("#", "x/y", True),
     ("a/+/c", "a//c", True), ("a/b/c", "a/b", False)],
)  # fmt: skip
def test_topic_filters_match_as_in_mqtt(pattern, topic, matches):
    assert topic_matches(pattern, topic) is matches


async def test_retained_messages_wills_and_clean_exits():
    broker = MemoryBroker()
    async with broker.connect("writer", []) as writer:
        await writer.publish("s/1", b"on", retain=True)
        await writer.publish("s/1", b"", retain=True)  # cleared
        await writer.publish("s/2", b"kept", retain=True)
    will = LastWill("s/3", b"gone")
    async with (
        broker.connect("reader", [("s/+", 1)]) as reader,
        broker.connect("mortal", [], will=will) as mortal,
    ):
        first = await anext(reader.messages())
        assert (first.topic, first.payload, first.retain) == ("s/2", b"kept", True)
        broker.drop("mortal")  # vanished: the broker publishes its will
        assert not mortal.is_connected
        gone = await anext(reader.messages())
        assert (gone.topic, gone.payload) == ("s/3", b"gone")
        broker.restore("mortal")
        assert mortal.is_connected
        assert mortal.connects == 2
    assert broker.retained == {"s/2": b"kept", "s/3": b"gone"}


async def test_edge_and_agents_train_through_the_memory_transport():
    broker = MemoryBroker()
    edge = EdgeService(
        EdgeSettings(
            policy="ares", rounds=2, min_devices=2, batch_size=32, checkpoint=None,
            torch_threads=1, registration_timeout_s=60, profile_timeout_s=60,
        ),
        connect=broker.connect,
    )  # fmt: skip
    agents = [
        DeviceAgent(
            DeviceSettings(
                device_id=f"dev-{i}",
                shard_index=i,
                num_shards=2,
                exit_on_finish=True,
                torch_threads=1,
            ),
            connect=broker.connect,
        )
        for i in range(2)
    ]
    async with asyncio.timeout(120), asyncio.TaskGroup() as tasks:
        for agent in agents:
            tasks.create_task(agent.run())
        report = await edge.run()
    assert [r.round for r in report.rounds] == [1, 2]
    for round_report in report.rounds:
        assert {d.status for d in round_report.devices.values()} == {"ok"}
    assert report.final_accuracy is not None
    assert report.initial_accuracy is not None
    assert report.final_accuracy > report.initial_accuracy + 0.3
    assert all(agent.rounds_done == 2 for agent in agents)


async def test_a_forged_offline_status_is_refuted_without_a_broker():
    broker = MemoryBroker()
    edge = EdgeService(
        EdgeSettings(rounds=3, min_devices=2, policy="sl", split=2, batch_size=32,
                     batches_per_round=20, checkpoint=None, torch_threads=1),
        connect=broker.connect,
    )  # fmt: skip
    agents = [
        DeviceAgent(DeviceSettings(device_id=f"dev-{i}", shard_index=i, num_shards=2,
                                   exit_on_finish=True, torch_threads=1), connect=broker.connect)
        for i in range(2)
    ]  # fmt: skip
    status_topic = Topics().device("dev-1", DeviceChannel.STATUS)

    async def forge() -> None:
        while edge.current_round is None:  # noqa: ASYNC110 - polling another task's attribute
            await asyncio.sleep(0.005)
        async with broker.connect("forger", []) as forger:
            forged = to_json(DeviceStatus(device_id="dev-1", state="offline"))
            await forger.publish(status_topic, forged, retain=True)

    async with asyncio.timeout(120), asyncio.TaskGroup() as tasks:
        for agent in agents:
            tasks.create_task(agent.run())
        tasks.create_task(forge())
        report = await edge.run()
    assert edge.counters["liveness.refuted"] == 1
    assert all(r.devices["dev-1"].status == "ok" for r in report.rounds)
