"""The raw MQTT CONNECT/CONNACK probe, offline and against a real broker."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import pytest

from broker import BrokerError, LocalBroker, async_probe_mqtt, free_port, probe_mqtt
from broker.probe import _remaining_length, connect_packet, parse_connack


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_encoding(n: int, encoded: bytes) -> None:
    assert _remaining_length(n) == encoded


def test_connect_packet_is_mqtt_311_clean_session() -> None:
    packet = connect_packet("abc", keepalive=30)
    assert packet[0] == 0x10
    body = packet[2:]
    assert packet[1] == len(body)
    assert body[:6] == b"\x00\x04MQTT"
    assert body[6] == 4  # protocol level 3.1.1
    assert body[7] == 0x02  # clean session, no will, no credentials
    assert struct.unpack("!H", body[8:10]) == (30,)
    assert body[10:] == b"\x00\x03abc"


def test_parse_connack() -> None:
    assert parse_connack(b"\x20\x02\x00\x00") == 0
    assert parse_connack(b"\x20\x02\x00\x05") == 5
    with pytest.raises(BrokerError, match="not an MQTT CONNACK"):
        parse_connack(b"HTTP")


def test_probe_nothing_listening_raises_oserror() -> None:
    with pytest.raises(ConnectionRefusedError):
        probe_mqtt("127.0.0.1", free_port(), timeout=0.5)


@pytest.mark.parametrize(
    ("reply", "match"),
    [(b"", "closed before CONNACK"), (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not an MQTT CONNACK")],
)
def test_probe_non_mqtt_peer_raises_broker_error(reply: bytes, match: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def answer_once() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(reply)

        thread = threading.Thread(target=answer_once, daemon=True)
        thread.start()
        try:
            with pytest.raises(BrokerError, match=match):
                probe_mqtt("127.0.0.1", port, timeout=2.0)
        finally:
            thread.join(5.0)


@pytest.mark.broker
def test_raw_connect_gets_connack_accepted(mosquitto: LocalBroker) -> None:
    assert probe_mqtt(mosquitto.host, mosquitto.port) == 0


@pytest.mark.broker
async def test_async_raw_connect_gets_connack_accepted(mosquitto: LocalBroker) -> None:
    async with asyncio.timeout(2.0):
        assert await async_probe_mqtt(mosquitto.host, mosquitto.port) == 0
