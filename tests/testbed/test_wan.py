"""The emulated WAN link: relays bytes, resets or goes dark on a cut, comes back on restore."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from testbed.wan import WanLink

WAIT_S = 10.0


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    """A TCP echo server's port: what the link relays to."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def round_trip(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(WAIT_S):
            return await reader.readexactly(len(data))
    finally:
        writer.close()


async def test_relays_both_ways(echo: int) -> None:
    async with WanLink("127.0.0.1", echo) as wan:
        payload = bytes(range(256)) * 4096  # 1 MiB, several relay chunks
        assert await round_trip(wan.port, payload) == payload
        assert wan.connections == 1


async def test_cut_resets_open_connections_and_refuses_new_ones(echo: int) -> None:
    async with WanLink("127.0.0.1", echo) as wan:
        reader, writer = await asyncio.open_connection("127.0.0.1", wan.port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        await wan.cut()
        assert not wan.is_up
        async with asyncio.timeout(WAIT_S):
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await reader.readexactly(1)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", wan.port)
        writer.close()
        await wan.restore()
        assert await round_trip(wan.port, b"back") == b"back"  # the same port again


async def test_a_silent_cut_holds_bytes_until_the_link_returns(echo: int) -> None:
    async with WanLink("127.0.0.1", echo) as wan:
        reader, writer = await asyncio.open_connection("127.0.0.1", wan.port)
        await wan.cut(silent=True)
        writer.write(b"held")
        pending = asyncio.create_task(reader.readexactly(4))
        late = asyncio.create_task(round_trip(wan.port, b"late"))  # connects while dark
        # Nothing moves while the link is dark, though the echo answers a direct connection.
        for _ in range(3):
            assert await round_trip(echo, b"direct") == b"direct"
        assert not pending.done()
        assert not late.done()
        await wan.restore()
        async with asyncio.timeout(WAIT_S):
            assert await pending == b"held"
            assert await late == b"late"
        writer.close()
