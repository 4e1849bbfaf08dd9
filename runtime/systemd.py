"""systemd integration: readiness, status and a watchdog fed only while the service makes progress.

The notification protocol (sd_notify(3)) is one datagram of ``KEY=VALUE`` lines sent to the unix
socket named by ``$NOTIFY_SOCKET``: a path, or ``@name`` for the abstract namespace. No libsystemd:
a socket and ``sendto`` are all it takes. Without ``$NOTIFY_SOCKET`` everything here is a no-op.

What a service sends (see ``supervise``):

- ``READY=1`` once, when the service says it is ready (``Supervised.ready``): the edge after it
  connected to the broker and began waiting for devices; an agent after it connected and
  subscribed (it then registers with whichever edge session is live).
- ``STATUS=...`` when the service's one-line status changes (waiting for devices, round N/M,
  reconnecting to the broker); ``systemctl status`` shows it.
- ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` (systemd's WatchdogSec=), only while the
  service is healthy; ``$WATCHDOG_PID`` naming another process turns the watchdog off (that
  variable was meant for a parent that spawned us).
- ``STOPPING=1`` when shutdown begins: on SIGTERM, or when the service's main coroutine ends.

Healthy means all of these hold when a ping is due:

1. **The event loop turns.** The pings come from a task on the service's own event loop, so a
   loop blocked by a stuck call starves them and systemd restarts the service after WatchdogSec.
2. **The essential tasks live.** The MQTT link's connection loop (which reconnects after broker
   outages: a broker outage is *not* unhealthy, it only shows in the status), and the message
   dispatcher. The main coroutine itself is essential too: when it ends, the process stops.
3. **The main work progresses.** Every network wait in the services is bounded by a timeout;
   compute in worker threads is not, so a wedged thread (a hung driver, a deadlock) would leave
   a service waiting forever on a turning loop. Each service keeps a progress stamp with a bound
   on how stale it may legitimately get, checked by ``Supervised.health_problem``:

   - the edge stamps every phase change of its main task (waiting, round start, evaluating,
     round done: each one it publishes on ``edge/status``); the bound is the longest phase its own
     timeouts allow (twice ``registration_timeout_s`` plus ``profile_timeout_s`` before round 1,
     or ``round_timeout_s`` plus ``close_grace_s``) plus 300 s for evaluation and checkpoints;
   - an agent stamps the start of each compute step in its compute thread and clears it at the
     end; a step still running after 600 s (far beyond a batch or a profile on a Raspberry Pi)
     is wedged. An idle agent has no step in flight.

While any of these fails the pings stop, the status says why, and a warning is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol, Self

from schemas.errors import AresError

log = logging.getLogger(__name__)

STATUS_POLL_S = 2.0  # how often the status line is compared (and sent when it changed)
RECHECK_S = 0.5  # while unhealthy: how soon to look again, so pings resume promptly


class SystemdError(AresError, ValueError):
    """The systemd environment variables hold something we cannot use."""


class Supervised(Protocol):
    """What a service offers its supervisor (the EdgeService and the DeviceAgent both do)."""

    @property
    def ready(self) -> asyncio.Event:
        """Set once the service is up and serving."""

    def health_problem(self) -> str | None:
        """None while healthy (see the module docstring), else a short reason."""

    def status_line(self) -> str:
        """What the service is doing, in one line for people."""


def notify_address(value: str) -> str:
    """The socket address for ``$NOTIFY_SOCKET``: an absolute path, or ``@name`` (abstract)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # Linux's abstract namespace: a leading NUL byte
    if value.startswith("/"):
        return value
    raise SystemdError(
        f"NOTIFY_SOCKET={value!r} is neither an absolute path nor an abstract socket '@name'"
    )


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """WatchdogSec= in seconds from ``$WATCHDOG_USEC``, or None when we need not ping.

    ``$WATCHDOG_PID``, when set, must be our own pid: otherwise the variables were inherited
    from the process systemd watches, and pinging for it would be a lie.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "").strip()
    if not usec:
        return None
    if not usec.isdigit() or int(usec) == 0:
        raise SystemdError(f"WATCHDOG_USEC={usec!r} is not a positive number of microseconds")
    pid = env.get("WATCHDOG_PID", "").strip()
    if pid:
        if not pid.isdigit():
            raise SystemdError(f"WATCHDOG_PID={pid!r} is not a process id")
        if int(pid) != os.getpid():
            return None
    return int(usec) / 1e6


class Notifier:
    """Sends sd_notify messages to systemd; without a socket address every call does nothing.

    The socket is non-blocking: a full receive queue drops a message (the next ping comes half
    a watchdog interval later) instead of stalling the event loop.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._failing = False  # log the first of a run of failures, not each
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "").strip()
        return cls(notify_address(value) if value else None)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; True if it was sent."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:  # no listener, queue full, socket gone: never fatal
            if not self._failing:
                log.warning("systemd notification not sent to %r: %s", self.address, exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([_status_field(status)] if status else []))

    def status(self, text: str) -> bool:
        return self.send(_status_field(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")


def _status_field(text: str) -> str:
    # One line: a newline would start a new (bogus) KEY=VALUE field.
    return "STATUS=" + " ".join(text.split())


async def supervise(notifier: Notifier, service: Supervised, watchdog_s: float | None) -> None:
    """Until cancelled: READY=1 when the service is ready, then status changes and pings.

    Runs on the service's event loop (that is the point: a blocked loop stops the pings).
    """
    await service.ready.wait()  # systemd bounds this wait itself (TimeoutStartSec=)
    loop = asyncio.get_running_loop()
    status = _describe(service, None)
    notifier.ready(status)
    if watchdog_s is None:
        log.info("systemd: ready")
    else:
        log.info("systemd: ready; watchdog pings every %.1f s while healthy", watchdog_s / 2)
    next_ping = loop.time()
    withheld: str | None = None
    while True:
        problem = _check(service)
        line = _describe(service, problem)
        if line != status:
            notifier.status(line)
            status = line
        now = loop.time()
        if watchdog_s is not None and now >= next_ping:
            if problem is None:
                if withheld is not None:
                    log.info("systemd: healthy again; watchdog pings resume")
                notifier.watchdog()
                next_ping = now + watchdog_s / 2
            else:
                if withheld is None:
                    log.warning("systemd: watchdog pings withheld: %s", problem)
                next_ping = now + min(RECHECK_S, watchdog_s / 2)
            withheld = problem
        wake = STATUS_POLL_S if watchdog_s is None else max(0.0, next_ping - loop.time())
        await asyncio.sleep(min(STATUS_POLL_S, wake))


def _check(service: Supervised) -> str | None:
    try:
        return service.health_problem()
    except Exception as exc:  # a broken check must not look healthy, nor end the supervision
        log.debug("systemd: the health check failed", exc_info=True)  # the reason is logged
        return f"the health check failed: {exc!r}"


def _describe(service: Supervised, problem: str | None) -> str:
    line = service.status_line()
    return line if problem is None else f"{line} (unhealthy: {problem})"
