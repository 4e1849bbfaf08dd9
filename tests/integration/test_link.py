"""The MQTT link survives a broker restart: it reconnects, resubscribes and delivers."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.integration.helpers import mqtt, wait_until
from transport import LinkError, MqttLink


async def test_reconnects_after_broker_restart(mosquitto):
    settings = mqtt(mosquitto, reconnect_min_s=0.05, reconnect_max_s=0.5, connect_timeout_s=2)
    async with (
        MqttLink(settings, "sub", [("t/#", 1)]) as sub,
        MqttLink(settings, "pub", []) as pub,
    ):
        await pub.publish("t/a", b"before")
        assert (await asyncio.wait_for(sub.receive(), 5)).payload == b"before"

        mosquitto.kill()
        # Both notice the broker is gone (however long a busy host takes) before it is back.
        await wait_until(lambda: not pub.is_connected and not sub.is_connected)
        mosquitto.restart()
        # The broker keeps no state across the restart: the subscription is back only once
        # the subscriber has reconnected (and resubscribed).
        await sub.wait_connected(10)
        await pub.publish("t/a", b"after")  # waits for its own reconnect
        message = await asyncio.wait_for(sub.receive(), 10)
        assert message.payload == b"after"
        assert sub.connects == 2
        assert pub.connects == 2


async def test_publish_gives_up_after_its_deadline(mosquitto):
    settings = mqtt(mosquitto, publish_timeout_s=0.5, connect_timeout_s=1)
    async with MqttLink(settings, "pub", []) as pub:
        mosquitto.kill()
        with pytest.raises(LinkError, match="did not complete"):
            await pub.publish("t", b"x")


async def test_oversized_payload_is_refused_before_sending(mosquitto):
    async with MqttLink(mqtt(mosquitto, max_payload_bytes=2048), "pub", []) as pub:
        with pytest.raises(LinkError, match="exceeds max_payload_bytes"):
            await pub.publish("t", b"x" * 4096)
        assert pub.is_connected


async def test_many_publishes_in_flight_log_no_warning(mosquitto, caplog):
    # An edge has a publish in flight per device; aiomqtt warns above 10 unless told otherwise.
    async with MqttLink(mqtt(mosquitto), "pub", []) as pub:
        with caplog.at_level(logging.WARNING):
            await asyncio.gather(*(pub.publish(f"t/{i}", b"x" * 1024) for i in range(200)))
    assert not [r for r in caplog.records if "pending" in r.getMessage()]


async def test_no_broker_fails_fast_with_a_clear_error():
    settings = mqtt_url("mqtt://127.0.0.1:9", connect_timeout_s=0.5)
    with pytest.raises(LinkError, match="no connection to the broker"):
        async with MqttLink(settings, "x", []):
            pass


def mqtt_url(url: str, **changes):
    from transport import MqttSettings

    return MqttSettings(url=url, **changes)


async def test_subscriptions_added_later_hold_across_a_restart_and_can_be_dropped(mosquitto):
    """An edge replica reads the round traffic of the devices each order gives it: it
    subscribes and unsubscribes while connected, and a reconnect keeps what it holds."""
    settings = mqtt(mosquitto, reconnect_min_s=0.05, reconnect_max_s=0.5, connect_timeout_s=2)
    async with (
        MqttLink(settings, "sub", [("fixed", 1)]) as sub,
        MqttLink(settings, "pub", []) as pub,
    ):
        await sub.subscribe([("later/a", 1), ("later/b", 1)])
        await pub.publish("later/a", b"a1")
        assert (await asyncio.wait_for(sub.receive(), 5)).payload == b"a1"

        mosquitto.kill()
        await wait_until(lambda: not pub.is_connected and not sub.is_connected)
        mosquitto.restart()
        await sub.wait_connected(10)
        await pub.publish("later/b", b"b1")  # resubscribed on the reconnect
        assert (await asyncio.wait_for(sub.receive(), 10)).payload == b"b1"

        await sub.unsubscribe(["later/a"])
        await pub.publish("later/a", b"a2")  # no longer ours...
        await pub.publish("fixed", b"marker")  # ...so the next message is this one
        assert (await asyncio.wait_for(sub.receive(), 5)).payload == b"marker"
