"""Running a service's coroutine: uvloop where available, signals, systemd notifications.

A service passed as ``service=`` is supervised for systemd (see ``runtime.systemd``): READY=1 when
it says it is ready, STATUS= lines, watchdog pings while it is healthy, STOPPING=1 at shutdown.
Without ``$NOTIFY_SOCKET`` that is all skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from runtime.systemd import Notifier, Supervised, supervise, watchdog_interval

T = TypeVar("T")

RECANCEL_AFTER_S = 5.0  # graceful shutdown takes ~3 s at most; past this, cancel once more


def run(main: Callable[[], Coroutine[Any, Any, T]], *, service: Supervised | None = None) -> T:
    """Run ``main()`` on uvloop when installed; SIGTERM and SIGINT cancel it cleanly.

    ``service`` (the object whose coroutine ``main`` is) is reported to systemd when we run
    under it. Bad systemd variables raise ``SystemdError`` (a ValueError) before anything runs.
    """
    notifier = Notifier.from_env() if service is not None else Notifier(None)
    watchdog_s = watchdog_interval() if notifier.enabled else None
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # uvloop is optional (e.g. on Windows)
        pass
    with notifier, asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_cancel_on_signals(main, notifier, service, watchdog_s))


async def _cancel_on_signals(
    main: Callable[[], Coroutine[Any, Any, T]],
    notifier: Notifier,
    service: Supervised | None,
    watchdog_s: float | None,
) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    supervisor: asyncio.Task[None] | None = None
    if service is not None and notifier.enabled:
        supervisor = loop.create_task(
            supervise(notifier, service, watchdog_s), name="systemd-supervisor"
        )

    def shutting_down() -> None:
        nonlocal supervisor
        if supervisor is not None:  # once: no pings or status changes while we wind down
            supervisor.cancel()
            supervisor = None
            notifier.stopping()

    def stop() -> None:
        if task.done():
            return
        shutting_down()
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
        shutting_down()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
