"""Running a service's coroutine: uvloop where available, signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

RECANCEL_AFTER_S = 5.0  # graceful shutdown takes ~3 s at most; past this, cancel once more


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on uvloop when installed; SIGTERM and SIGINT cancel it cleanly."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # uvloop is optional (e.g. on Windows)
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_cancel_on_signals(main))


async def _cancel_on_signals(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def stop() -> None:
        if task.done():
            return
        task.cancel()
        # A backstop: should library code swallow the cancellation, ask again until we are gone.
        loop.call_later(RECANCEL_AFTER_S, stop)

    for sig in (signal.SIGTERM, signal.SIGINT):
        # Not every platform or thread supports signal handlers.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
    try:
        return await main()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
