"""LocalBroker: one Mosquitto process for the demo and the tests, never left running."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import dataclasses
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from broker.binary import find_mosquitto
from broker.config import BrokerConfig, render_config
from broker.errors import BrokerError
from broker.ports import free_port, owns_listening_port
from broker.probe import async_probe_mqtt, probe_mqtt

log = logging.getLogger(__name__)

# How often start() tries a fresh port when another process grabbed the chosen one
# between free_port() and mosquitto's bind().
PORT_ATTEMPTS = 5
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_LOG_TAIL_BYTES = 4000

# The atexit registry: brokers started and not yet stopped by this process.
_live: set[LocalBroker] = set()


@atexit.register
def _stop_all() -> None:
    """Backstop for brokers whose owner forgot stop() (or crashed before it)."""
    for broker in list(_live):
        with contextlib.suppress(Exception):
            broker.stop(timeout=2.0)


class _PortInUse(BrokerError):
    """Mosquitto could not bind its port."""


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """On Linux, a preexec_fn making the child get SIGTERM when its parent dies.

    Covers what atexit cannot: our process being SIGKILLed or crashing. The signal is
    tied to the *thread* that forks, so start the broker from a long-lived thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        # Runs in the child between fork and exec: keep it tiny, everything is preloaded.
        prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _connect_host(host: str) -> str:
    """Where a client reaches a broker bound to ``host`` (wildcards mean loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LocalBroker:
    """A Mosquitto process on a private config, for tests and the demo.

    Use it as a context manager (``with`` or ``async with``) so that it is stopped even
    when the body raises. Not thread-safe: one owner drives it.
    """

    def __init__(
        self,
        config: BrokerConfig | None = None,
        *,
        binary: str | None = None,
        workdir: Path | None = None,
    ) -> None:
        self._config = config if config is not None else BrokerConfig()
        self._binary = binary
        self._workdir_arg = workdir
        self._port = self._config.port  # 0 until start() picks one
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._owns_workdir = False
        self._log_offset = 0  # where the current process's output starts in the log
        self._config_file: Path | None = None  # set by from_config_file: run this file as is
        if self._config.allow_anonymous and not _is_loopback(self._config.host):
            log.warning(
                "broker on %s accepts anonymous clients from the network; "
                "use authentication outside a closed demo network",
                self._config.host,
            )

    @classmethod
    def from_config_file(
        cls,
        path: Path,
        *,
        port: int,
        host: str = "127.0.0.1",
        binary: str | None = None,
        workdir: Path | None = None,
    ) -> Self:
        """A broker running a given mosquitto.conf unchanged (e.g. ``ares broker init``'s).

        ``host``/``port`` name a plain MQTT listener of that file: the readiness probe connects
        there (any CONNACK counts, "not authorized" included) and ``url`` points there. The work
        dir holds only the log; paths in the file should be absolute.
        """
        broker = cls(BrokerConfig(host=host, port=port), binary=binary, workdir=workdir)
        broker._config_file = path.absolute()
        return broker

    @property
    def config_file(self) -> Path | None:
        """The config file given to from_config_file; None for a generated config."""
        return self._config_file

    def reload(self) -> None:
        """SIGHUP: mosquitto rereads its password file and ACL (and reopens its log)."""
        proc = self._check_alive()
        proc.send_signal(signal.SIGHUP)

    # -- properties ---------------------------------------------------------------

    @property
    def config(self) -> BrokerConfig:
        """The configuration as given (port may be 0: see ``port`` for the real one)."""
        return self._config

    @property
    def host(self) -> str:
        """Address clients connect to."""
        return _connect_host(self._config.host)

    @property
    def port(self) -> int:
        """The listening port; known once the broker has been started."""
        if self._port == 0:
            raise BrokerError("the broker has no port yet: start() it first")
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://host:port``, as accepted by parse_broker_url."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Pid of the current mosquitto process, None when there is none."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    @property
    def workdir(self) -> Path | None:
        """Directory holding the generated config and the log; None when stopped."""
        return self._workdir

    @property
    def log_path(self) -> Path | None:
        return None if self._workdir is None else self._workdir / "mosquitto.log"

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES, *, current_only: bool = False) -> str:
        """The end of the broker's log (all runs since start(), or the current one)."""
        path = self.log_path
        if path is None or not path.exists():
            return ""
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            begin = max(self._log_offset if current_only else 0, size - max_bytes)
            f.seek(begin)
            return f.read().decode(errors="replace").strip()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running else "stopped"
        return f"LocalBroker({self._config.host}:{self._port or '?'}, {state})"

    # -- sync lifecycle -----------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Start mosquitto and return once it answers MQTT CONNECT; no-op if running.

        Raises BrokerNotFoundError without a binary, BrokerError if it does not come up.
        """
        if self.is_running:
            return self
        binary = find_mosquitto(self._binary)
        deadline = time.monotonic() + timeout
        try:
            failure: _PortInUse | None = None
            for port in self._candidate_ports():
                self._spawn(binary, port)
                try:
                    self._wait_ready(deadline)
                    return self
                except _PortInUse as exc:
                    self._reap()
                    failure = exc
            raise self._no_port_error(failure)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; remove the work dir. Idempotent."""
        self._terminate(timeout)
        self._release()

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would (for chaos tests); restart() brings it back.

        Keeps the work dir (and any persistence database) for the restart.
        """
        self._kill_and_reap()

    def restart(self, timeout: float = 10.0) -> Self:
        """Stop (if running) and start again on the same port with the same config."""
        port = self.port
        binary = find_mosquitto(self._binary)
        self._terminate(5.0)
        self._spawn(binary, port)
        try:
            self._wait_ready(time.monotonic() + timeout)
        except _PortInUse as exc:
            self._reap()
            raise BrokerError(f"cannot restart on port {port}: {exc}") from exc
        except BaseException:
            self._kill_and_reap()
            raise
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- async lifecycle ----------------------------------------------------------

    # The timeout parameters mirror the sync API and bound the whole operation, turning
    # expiry into a BrokerError with the broker's log rather than a bare TimeoutError.
    async def astart(self, timeout: float = 10.0) -> Self:  # noqa: ASYNC109
        """start() for event loops: the readiness wait awaits instead of sleeping.

        Only the fork/exec itself runs on the loop (milliseconds); it runs in the loop's
        thread rather than a worker so that the parent-death signal is tied to a thread
        that lives as long as the loop.
        """
        if self.is_running:
            return self
        binary = find_mosquitto(self._binary)
        deadline = time.monotonic() + timeout
        try:
            failure: _PortInUse | None = None
            for port in self._candidate_ports():
                self._spawn(binary, port)
                try:
                    await self._await_ready(deadline)
                    return self
                except _PortInUse as exc:
                    self._reap()
                    failure = exc
            raise self._no_port_error(failure)
        except BaseException:
            await self.astop()
            raise

    async def astop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """stop() without blocking the loop while mosquitto shuts down."""
        await self._aterminate(time.monotonic() + timeout)
        self._release()

    async def arestart(self, timeout: float = 10.0) -> Self:  # noqa: ASYNC109
        """restart() for event loops."""
        port = self.port
        binary = find_mosquitto(self._binary)
        await self._aterminate(time.monotonic() + 5.0)
        self._spawn(binary, port)
        try:
            await self._await_ready(time.monotonic() + timeout)
        except _PortInUse as exc:
            self._reap()
            raise BrokerError(f"cannot restart on port {port}: {exc}") from exc
        except BaseException:
            self._kill_and_reap()
            raise
        return self

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    # -- internals ----------------------------------------------------------------

    def _candidate_ports(self) -> Iterator[int]:
        """Ports to try: the configured one; else the previous one, then fresh free ones.

        Lazily: a fresh port is chosen only after the previous attempt lost its race.
        """
        if self._config.port:
            yield self._config.port
            return
        attempts = PORT_ATTEMPTS
        if self._port:
            yield self._port
            attempts -= 1
        for _ in range(attempts):
            yield free_port(self._config.host)

    def _no_port_error(self, failure: _PortInUse | None) -> BrokerError:
        if self._config.port:
            return BrokerError(f"cannot start: {failure}")
        return BrokerError(f"no free port after {PORT_ATTEMPTS} attempts; last: {failure}")

    def _prepare_workdir(self) -> Path:
        if self._workdir is None:
            if self._workdir_arg is not None:
                self._workdir_arg.mkdir(parents=True, exist_ok=True)
                self._workdir, self._owns_workdir = self._workdir_arg.absolute(), False
            else:
                self._workdir = Path(tempfile.mkdtemp(prefix="ares-mosquitto-"))
                self._owns_workdir = True
        return self._workdir

    def _effective_config(self, port: int, workdir: Path) -> BrokerConfig:
        cfg = self._config
        data = cfg.persistence_dir
        if cfg.persistence:
            data = (data or workdir / "data").absolute()
            data.mkdir(parents=True, exist_ok=True)
        user = cfg.run_as_user
        if user is None and hasattr(os, "geteuid") and os.geteuid() == 0:
            # Started as root, mosquitto switches to user "mosquitto", who can neither
            # write our private work dir (persistence) nor read files under a 0700 tmp
            # dir; this broker is our own loopback child, so it runs as we do.
            user = "root"
        # Mosquitto runs in the work dir: relative paths must mean what they mean to us.
        return dataclasses.replace(
            cfg,
            port=port,
            persistence_dir=data,
            password_file=None if cfg.password_file is None else cfg.password_file.absolute(),
            acl_file=None if cfg.acl_file is None else cfg.acl_file.absolute(),
            run_as_user=user,
        )

    def _spawn(self, binary: str, port: int) -> None:
        workdir = self._prepare_workdir()
        conf = self._config_file
        if conf is None:
            conf = workdir / "mosquitto.conf"
            conf.write_text(render_config(self._effective_config(port, workdir)))
        log_path = workdir / "mosquitto.log"
        # Append: after kill()/restart() the earlier runs' log is still worth reading.
        with log_path.open("ab") as out:
            self._log_offset = out.tell()
            self._proc = subprocess.Popen(
                [binary, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                # Own process group: a terminal's Ctrl-C reaches only us, and we stop it.
                start_new_session=True,
                # Not thread-safe in general; ours only calls an already-loaded prctl.
                preexec_fn=_pdeathsig_preexec(),
            )
        self._port = port
        _live.add(self)

    def _check_alive(self) -> subprocess.Popen[bytes]:
        """Return the process started by _spawn; raise if it has already exited."""
        if self._proc is None:
            raise BrokerError("mosquitto is not running")
        code = self._proc.poll()
        if code is None:
            return self._proc
        tail = self.log_tail(current_only=True)
        if "Address already in use" in tail:
            raise _PortInUse(f"port {self._port} is taken: {tail}")
        raise BrokerError(f"mosquitto exited with code {code} while starting:\n{tail}")

    def _answered_by_us(self) -> bool:
        """After a successful probe: was it our process that answered?

        Another broker may have taken the port between free_port() and our bind (tests
        running in parallel); then our process exits with EADDRINUSE shortly, which the
        next _check_alive() turns into a retry on another port.
        """
        return owns_listening_port(self._check_alive().pid, self._port) is not False

    def _timeout_error(self, last: BaseException | None) -> BrokerError:
        return BrokerError(
            f"mosquitto did not answer MQTT on {self.url} in time (last probe: {last!r}):\n"
            f"{self.log_tail(current_only=True)}"
        )

    def _wait_ready(self, deadline: float) -> None:
        """Poll until our process answers CONNECT with CONNACK."""
        delay, probe_timeout, last = 0.002, 0.05, None
        while True:
            self._check_alive()
            try:
                probe_mqtt(self.host, self._port, min(probe_timeout, self._left(deadline)))
            except (OSError, BrokerError) as exc:
                last = exc
            else:
                if self._answered_by_us():
                    return
                last = BrokerError(f"port {self._port} is answered by another process")
            if time.monotonic() >= deadline:
                raise self._timeout_error(last)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            # Short probes first, so a silent squatter on the port costs little before
            # _check_alive sees our process exit; longer ones for a slow machine.
            probe_timeout = min(probe_timeout * 2, 1.0)

    async def _await_ready(self, deadline: float) -> None:
        delay, probe_timeout, last = 0.002, 0.05, None
        while True:
            self._check_alive()
            try:
                async with asyncio.timeout(min(probe_timeout, self._left(deadline))):
                    await async_probe_mqtt(self.host, self._port)
            except (OSError, BrokerError) as exc:  # TimeoutError is an OSError
                last = exc
            else:
                if self._answered_by_us():
                    return
                last = BrokerError(f"port {self._port} is answered by another process")
            if time.monotonic() >= deadline:
                raise self._timeout_error(last)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            probe_timeout = min(probe_timeout * 2, 1.0)

    @staticmethod
    def _left(deadline: float) -> float:
        """Time left before ``deadline``, but enough for one loopback round trip."""
        return max(0.01, deadline - time.monotonic())

    def _terminate(self, timeout: float) -> None:
        """SIGTERM (mosquitto saves its database and exits), SIGKILL after ``timeout``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            # Short naps: Popen.wait(timeout) backs off to 50 ms, which would add up to that
            # much to every stop (mosquitto itself needs 2-100 ms).
            deadline, nap = time.monotonic() + timeout, 0.0005
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(nap)
                nap = min(nap * 2, 0.005)
        self._kill_and_reap()

    async def _aterminate(self, deadline: float) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            # Polling: Popen offers no awaitable exit, and a child watcher would be
            # process-global state for a wait of a few milliseconds.
            while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        self._kill_and_reap()

    def _kill_and_reap(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        self._reap()

    def _reap(self) -> None:
        """Collect the exit status so no zombie is left; forget the process."""
        proc = self._proc
        if proc is not None:
            # Only called once the process exited or got SIGKILL: this returns promptly.
            proc.wait()
        self._proc = None

    def _release(self) -> None:
        """After the process is gone: remove our work dir, leave the atexit registry."""
        self._reap()
        if self._workdir is not None and self._owns_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None
        _live.discard(self)
