"""The clustered alternative to bridges: two RabbitMQ nodes with the MQTT plugin, clustered.

A device connects to one node (its site's), the edge to the other; the cluster routes between
them, with the system's own transport (``MqttLink``) on both ends. Runs where RabbitMQ and its
MQTT plugin are installed (skipped otherwise, saying what is missing); it starts its own two
nodes and leaves the machine's RabbitMQ alone.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from schemas import DeviceChannel, Topics
from tests.integration import rabbitmq
from transport import MqttLink, MqttSettings
from transport.base import Message

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(rabbitmq.missing() is not None, reason=str(rabbitmq.missing())),
]

TOPICS = Topics()
WAIT_S = 30.0  # hang guard only


async def next_on(link: MqttLink, topic: str) -> Message:
    async with asyncio.timeout(WAIT_S):
        async for message in link.messages():
            if message.topic == topic:
                return message
    raise AssertionError("unreachable")


def settings(node: rabbitmq.Node, password: str) -> MqttSettings:
    # RabbitMQ 3.x speaks MQTT 3.1.1 (MQTT 5 came with 4.0... in 3.13); QoS 1 as ARES uses.
    return MqttSettings(url=node.url, username=rabbitmq.USER, password=password, protocol="3.1.1")


async def test_device_and_edge_on_different_nodes_exchange_up_and_down(tmp_path: Path) -> None:
    password = os.urandom(12).hex()
    with rabbitmq.rabbit_cluster(tmp_path / "rabbit", password) as cluster:
        assert cluster.running_nodes() == ["ares-a@localhost", "ares-b@localhost"]
        site_node, core_node = cluster.nodes
        act = TOPICS.device("pi-a", DeviceChannel.ACT)
        grad = TOPICS.device("pi-a", DeviceChannel.GRAD)
        edge_link = MqttLink(
            settings(core_node, password), "edge-0", [(TOPICS.all_devices(DeviceChannel.ACT), 1)]
        )
        device_link = MqttLink(settings(site_node, password), "pi-a", [(grad, 1)])
        async with edge_link as edge, device_link as device:
            await device.publish(act, b"batch-1")
            up = await next_on(edge, act)
            assert up.payload == b"batch-1"
            await edge.publish(grad, b"grad-1")
            down = await next_on(device, grad)
            assert down.payload == b"grad-1"

            # What docs/deployment.md warns about: RabbitMQ 3.x keeps retained messages on the
            # node that took them. A subscriber on that node gets the edge's status; one on the
            # other node gets the next live message first, so the retained one never came (it
            # would be delivered on subscribing). If this fails, RabbitMQ now shares retained
            # messages across the cluster: update the docs.
            await edge.publish(TOPICS.edge_status, b"retained", retain=True)
            status = [(TOPICS.edge_status, 1)]
            same = MqttLink(settings(core_node, password), "late-core", status)
            other = MqttLink(settings(site_node, password), "late-site", status)
            async with same, other:
                kept = await next_on(same, TOPICS.edge_status)
                assert (kept.payload, kept.retain) == (b"retained", True)
                await edge.publish(TOPICS.edge_status, b"live")
                first = await next_on(other, TOPICS.edge_status)
                assert first.payload == b"live"
