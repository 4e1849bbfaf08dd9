"""MqttLink on both protocol versions it offers, against a real Mosquitto.

MQTT 3.1.1 is what brokers without MQTT 5 speak (RabbitMQ 3.x's MQTT plugin among them).
"""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest

from broker import LocalBroker
from transport import MqttLink, MqttSettings

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_link_connects_publishes_and_receives(
    mosquitto: LocalBroker, protocol: Literal["5", "3.1.1"]
) -> None:
    settings = MqttSettings(url=mosquitto.url, protocol=protocol)
    async with (
        MqttLink(settings, f"reader-{protocol}", [("t/#", 1)]) as reader,
        MqttLink(settings, f"writer-{protocol}", []) as writer,
    ):
        await writer.publish("t/x", b"hello")
        async with asyncio.timeout(10.0):
            message = await reader.receive()
    assert (message.topic, message.payload) == ("t/x", b"hello")
