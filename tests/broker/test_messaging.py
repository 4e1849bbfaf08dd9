"""Messages through a broker running the generated config: size limits hold both ways."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import aiomqtt
import pytest

from broker import BrokerConfig, LocalBroker
from broker.probe import _remaining_length, connect_packet, parse_connack

pytestmark = pytest.mark.broker

MIB = 1024 * 1024


@pytest.mark.parametrize("protocol", [aiomqtt.ProtocolVersion.V311, aiomqtt.ProtocolVersion.V5])
async def test_8_mib_message_passes_through(
    mosquitto: LocalBroker, protocol: aiomqtt.ProtocolVersion
) -> None:
    payload = os.urandom(8 * MIB)
    topic = "ares/v1/dev/d1/weights"
    async with (
        aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=protocol) as edge,
        aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=protocol) as device,
    ):
        await edge.subscribe("ares/v1/dev/+/weights", qos=1)
        async with asyncio.timeout(20.0):
            await device.publish(topic, payload, qos=1, timeout=20.0)
            message = await anext(aiter(edge.messages))
    assert message.topic.value == topic
    assert message.payload == payload


def _publish_packet(topic: str, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH, built by hand so no client library enforces limits first."""
    body = struct.pack("!H", len(topic)) + topic.encode() + payload
    return b"\x30" + _remaining_length(len(body)) + body


def _connected_socket(broker: LocalBroker) -> socket.socket:
    sock = socket.create_connection((broker.host, broker.port), timeout=5.0)
    sock.sendall(connect_packet("size-probe"))
    assert parse_connack(sock.recv(4)) == 0
    return sock


def test_packet_over_max_packet_size_gets_client_disconnected() -> None:
    with LocalBroker(BrokerConfig(max_packet_size=1024)) as b:
        # Under the limit: the connection stays up and answers a PINGREQ.
        with _connected_socket(b) as sock:
            sock.sendall(_publish_packet("t", b"x" * 512))
            sock.sendall(b"\xc0\x00")
            assert sock.recv(2) == b"\xd0\x00"
        # Over the limit: the broker drops the connection.
        with _connected_socket(b) as sock:
            sock.sendall(_publish_packet("t", b"x" * 2048))
            try:
                data = sock.recv(16)
            except ConnectionResetError:
                data = b""
            assert data == b""
        assert "size-probe" in b.log_tail()
