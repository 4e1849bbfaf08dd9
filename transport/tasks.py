"""Task housekeeping: tracked fire-and-forget work, and cancelling a task without losing ours.

Cancellation must never be swallowed: a stop request (SIGTERM) that vanishes leaves a service
running. ``asyncio.wait_for`` on Python 3.11 can lose one when its inner awaitable finishes at
the same moment, so the services use ``asyncio.timeout`` and the helpers here instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class BackgroundTasks:
    """Holds references to background tasks (asyncio keeps only weak ones) and logs failures."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("background task failed: %s", exc)

    async def drain(self, timeout_s: float) -> None:
        """Let pending work finish within ``timeout_s``, then cancel what is left."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in list(self._tasks):
            task.cancel()


async def cancel_and_wait(task: asyncio.Future[Any], *, within_s: float | None = None) -> None:
    """Cancel ``task`` and wait (at most ``within_s``) until it is gone.

    Its outcome is dropped, but a cancellation of the *calling* task is passed on, never
    mistaken for the cancelled task's own CancelledError.
    """
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=within_s)
    if not done:
        log.warning("task %r did not stop within %.1f s; leaving it", task, within_s)
    elif not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("cancelled task ended with %r", exc)
