"""What the serving edge and the serving device share as services: one compute thread, one link
read by one dispatcher, background publishes, and a run that lasts until cancelled and then
says goodbye within a bound."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from transport import Link, ManagedLink
from transport.tasks import BackgroundTasks

T = TypeVar("T")
Loop = Callable[[], Coroutine[Any, Any, None]]
GOODBYE_S = 2.0  # how long shutdown waits for in-flight publishes, and then for the goodbye


class LinkService:
    def __init__(self, thread_name: str) -> None:
        self.ready = asyncio.Event()  # connected and reading (systemd's READY=1)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=thread_name)
        self._link: Link | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._background = BackgroundTasks()

    async def _dispatch(self, link: Link) -> None:
        """Read and handle every message until the link closes."""
        raise NotImplementedError

    async def _run_link(self, link: ManagedLink, loops: list[Loop], goodbye: Loop) -> None:
        """Connect, run the dispatcher and ``loops`` until cancelled; then let in-flight
        publishes finish and say ``goodbye``, each within ``GOODBYE_S``."""
        self._link = link
        async with link, asyncio.TaskGroup() as tasks:
            self._dispatcher = tasks.create_task(self._dispatch(link))
            started = [self._dispatcher, *(tasks.create_task(loop()) for loop in loops)]
            self.ready.set()
            try:
                await asyncio.Event().wait()  # until cancelled (SIGTERM, Ctrl-C)
            finally:
                for task in started:
                    task.cancel()
                await self._background.drain(GOODBYE_S)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(GOODBYE_S):
                        await goodbye()

    def close(self) -> None:
        """Stop the compute thread (work in hand finishes in the background)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _compute(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the compute thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        assert self._link is not None, "the service connects before it publishes"
        await self._link.publish(topic, payload, qos=1, retain=retain)

    def health_problem(self) -> str | None:
        """None while healthy: the link's connection loop and the dispatcher live."""
        if self._link is None or not self._link.running:
            return "the MQTT connection loop has ended"
        if self._dispatcher is None or self._dispatcher.done():
            return "the message dispatcher has ended"
        return None
