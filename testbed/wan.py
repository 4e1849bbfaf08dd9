"""An emulated WAN link between a site broker and the core broker, which can be cut.

A TCP relay on loopback: the site's bridge connects to ``port`` and every byte goes on to the
core (TLS passes through untouched). Two kinds of outage:

- ``cut()``: the link drops and a router says so. Open connections are reset and new ones
  refused, so both brokers notice at once.
- ``cut(silent=True)``: the link goes dark. Bytes in flight are held (TCP would retransmit
  them), new connections wait; the brokers notice only through their keepalives, as on a WAN
  that stops answering. What is held is delivered if the connection is still alive when the
  link returns.

``restore()`` brings the link back on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

from broker import free_port

CHUNK = 256 * 1024


class WanLink:
    """Use as ``async with WanLink(host, port) as wan:``; point the bridge at ``wan.port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.connections = 0  # accepted and relayed so far: the bridge's (re)connects
        self._server: asyncio.Server | None = None
        self._open = asyncio.Event()  # clear while the link is down
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        await self.restore()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def is_up(self) -> bool:
        return self._open.is_set()

    async def restore(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )
        self._open.set()

    async def cut(self, *, silent: bool = False) -> None:
        """Take the link down: with a reset for everyone, or ``silent``ly."""
        self._open.clear()
        if silent:
            return
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._open.wait()  # a dark link: the connection waits, as a SYN would
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.transport.abort()
                return
            self.connections += 1
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await source.read(CHUNK):
                await self._open.wait()  # held while the link is dark
                sink.write(data)
                await sink.drain()
        sink.transport.abort()  # one side gone: the other goes too
