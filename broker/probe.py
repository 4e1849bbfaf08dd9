"""A dependency-free MQTT liveness probe: raw CONNECT, read CONNACK.

Used to tell "the port is open" apart from "the broker answers MQTT" without importing
an MQTT client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct

from broker.errors import BrokerError

CONNACK_ACCEPTED = 0
# MQTT 3.1.1 CONNACK return codes, for error messages.
CONNACK_CODES = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
_DISCONNECT = b"\xe0\x00"


def _remaining_length(n: int) -> bytes:
    """Encode MQTT's variable-length 'remaining length' field."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str, keepalive: int = 10) -> bytes:
    """A minimal MQTT 3.1.1 CONNECT: clean session, no will, no credentials."""
    cid = client_id.encode()
    variable = b"\x00\x04MQTT" + bytes([4, 0x02]) + struct.pack("!H", keepalive)
    payload = struct.pack("!H", len(cid)) + cid
    body = variable + payload
    return b"\x10" + _remaining_length(len(body)) + body


def parse_connack(data: bytes) -> int:
    """Return the CONNACK return code of a 4-byte CONNACK, or raise BrokerError."""
    if len(data) != 4 or data[0] != 0x20 or data[1] != 0x02:
        raise BrokerError(f"not an MQTT CONNACK: {data!r}")
    return data[3]


def _probe_client_id() -> str:
    # Unique per process so concurrent probes never take over each other's session.
    return f"ares-probe-{os.getpid()}-{os.urandom(3).hex()}"


def probe_mqtt(host: str, port: int, timeout: float = 1.0) -> int:
    """Connect, send CONNECT, return the CONNACK return code (0 = accepted).

    Raises OSError if nothing listens or the connection fails, BrokerError if the peer
    does not speak MQTT. Any return code proves that an MQTT broker answers.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(connect_packet(_probe_client_id()))
        data = b""
        while len(data) < 4:
            chunk = sock.recv(4 - len(data))
            if not chunk:
                raise BrokerError(f"connection closed before CONNACK (got {data!r})")
            data += chunk
        code = parse_connack(data)
        if code == CONNACK_ACCEPTED:
            # Say goodbye so the broker logs a clean disconnect rather than a dropped socket.
            sock.sendall(_DISCONNECT)
        return code


async def async_probe_mqtt(host: str, port: int) -> int:
    """Like probe_mqtt, without blocking the event loop; bound it with asyncio.timeout."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(connect_packet(_probe_client_id()))
        await writer.drain()
        try:
            data = await reader.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            raise BrokerError(f"connection closed before CONNACK (got {exc.partial!r})") from exc
        code = parse_connack(data)
        if code == CONNACK_ACCEPTED:
            writer.write(_DISCONNECT)
            await writer.drain()
        return code
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
