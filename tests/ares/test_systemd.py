"""systemd notifications against a fake NOTIFY_SOCKET: READY, STATUS, WATCHDOG and STOPPING.

The fake systemd is a unix datagram socket bound in the test (a path, or an abstract name); a
thread stamps each datagram as it arrives, so a blocked event loop shows as a gap in the pings.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import runtime
from device_agent import agent as agent_module
from runtime import systemd
from runtime.systemd import Notifier, SystemdError, notify_address, supervise, watchdog_interval
from tests.integration.helpers import device_settings, wait_until


class FakeSystemd:
    """Records every notification with its arrival time (time.monotonic())."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        self.sock.close()

    def times(self, field: str) -> list[float]:
        """When each message carrying ``field`` (a whole line, e.g. WATCHDOG=1) arrived."""
        return [at for at, text in self.messages if field in text.split("\n")]

    def statuses(self) -> list[str]:
        return [
            line.removeprefix("STATUS=")
            for _, text in self.messages
            for line in text.split("\n")
            if line.startswith("STATUS=")
        ]

    async def wait_for(self, field: str, count: int = 1, timeout_s: float = 5.0) -> None:
        await wait_until(lambda: len(self.times(field)) >= count, timeout_s)


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[tuple[FakeSystemd, str]]:
    """A fake systemd on a socket path; yields it and the NOTIFY_SOCKET value."""
    path = str(tmp_path / "notify")
    fake = FakeSystemd(path)
    try:
        yield fake, path
    finally:
        fake.close()


class FakeService:
    """A service whose readiness, health and status the test sets."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.problem: str | None = None
        self.status = "starting"

    def health_problem(self) -> str | None:
        return self.problem

    def status_line(self) -> str:
        return self.status


# --- the environment ------------------------------------------------------------------------


def test_socket_addresses():
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@ares/notify") == "\0ares/notify"
    for bad in ("relative/path", "@", "vsock:2:1234"):
        with pytest.raises(SystemdError, match="NOTIFY_SOCKET"):
            notify_address(bad)


def test_watchdog_interval_from_the_environment():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 2.0
    # Inherited from the process systemd watches: not ours to feed.
    assert watchdog_interval({**mine, "WATCHDOG_PID": str(os.getppid())}) is None
    for bad in ({"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "1.5"}, {"WATCHDOG_USEC": "-3"}):
        with pytest.raises(SystemdError, match="WATCHDOG_USEC"):
            watchdog_interval(bad)
    with pytest.raises(SystemdError, match="WATCHDOG_PID"):
        watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "me"})


def test_without_notify_socket_nothing_is_sent():
    with Notifier.from_env({}) as notifier:
        assert not notifier.enabled
        assert not notifier.ready("up")
        assert not notifier.watchdog()


# --- the notifier -----------------------------------------------------------------------------


async def test_messages_reach_a_socket_path(fake_systemd):
    fake, path = fake_systemd
    with Notifier.from_env({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.ready("waiting for\ndevices")
        assert notifier.watchdog()
        assert notifier.stopping()
        await fake.wait_for("STOPPING=1")
    # One STATUS line: a newline in the text must not start a bogus field.
    assert [text for _, text in fake.messages] == [
        "READY=1\nSTATUS=waiting for devices",
        "WATCHDOG=1",
        "STOPPING=1",
    ]


async def test_messages_reach_an_abstract_socket():
    name = f"ares-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name)
    try:
        with Notifier.from_env({"NOTIFY_SOCKET": "@" + name}) as notifier:
            assert notifier.ready()
            await fake.wait_for("READY=1")
    finally:
        fake.close()


def test_a_missing_listener_is_not_fatal(tmp_path, caplog):
    with Notifier(str(tmp_path / "nobody-listens")) as notifier:
        assert not notifier.watchdog()
        assert not notifier.watchdog()
    warnings = [r for r in caplog.records if "not sent" in r.getMessage()]
    assert len(warnings) == 1  # the first failure of a run, not each


# --- supervision ------------------------------------------------------------------------------


async def run_supervisor(path: str, service: FakeService, watchdog_s: float | None):
    notifier = Notifier(path)
    task = asyncio.create_task(supervise(notifier, service, watchdog_s))
    return notifier, task


async def stop_supervisor(notifier: Notifier, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    notifier.close()


async def test_ready_once_then_pings_at_half_the_interval(fake_systemd):
    fake, path = fake_systemd
    service = FakeService()
    notifier, task = await run_supervisor(path, service, watchdog_s=0.4)
    try:
        await asyncio.sleep(0.3)
        assert fake.messages == []  # nothing before the service is ready
        service.status = "waiting for devices"
        service.ready.set()
        await fake.wait_for("WATCHDOG=1", count=6)
    finally:
        await stop_supervisor(notifier, task)
    assert len(fake.times("READY=1")) == 1
    assert fake.statuses()[0] == "waiting for devices"
    pings = fake.times("WATCHDOG=1")[:6]
    # Five gaps of half the interval each: their sum, unlike any one gap, is immune to when the
    # reader thread happened to be scheduled.
    assert 0.8 < pings[-1] - pings[0] < 1.6


async def test_pings_stop_while_unhealthy_and_resume(fake_systemd, caplog):
    fake, path = fake_systemd
    service = FakeService()
    service.ready.set()
    notifier, task = await run_supervisor(path, service, watchdog_s=0.2)
    try:
        await fake.wait_for("WATCHDOG=1", count=2)
        service.problem = "the message dispatcher has ended"
        await asyncio.sleep(0.15)  # a ping may have been on its way
        withheld_from = time.monotonic()
        await asyncio.sleep(0.6)
        assert [t for t in fake.times("WATCHDOG=1") if t > withheld_from] == []
        assert "unhealthy: the message dispatcher has ended" in fake.statuses()[-1]
        service.problem = None
        resumed = len(fake.times("WATCHDOG=1")) + 2
        await fake.wait_for("WATCHDOG=1", count=resumed)
    finally:
        await stop_supervisor(notifier, task)
    assert fake.statuses()[-1] == "starting"
    assert sum("withheld" in r.getMessage() for r in caplog.records) == 1


async def test_a_blocked_loop_stops_the_pings(fake_systemd):
    fake, path = fake_systemd
    service = FakeService()
    service.ready.set()
    notifier, task = await run_supervisor(path, service, watchdog_s=0.2)
    try:
        await fake.wait_for("WATCHDOG=1", count=3)
        blocked_at = time.monotonic()
        time.sleep(0.8)  # noqa: ASYNC251 - the point: a service blocking its own loop
        unblocked_at = time.monotonic()
        count = len(fake.times("WATCHDOG=1"))
        await fake.wait_for("WATCHDOG=1", count=count + 1)
    finally:
        await stop_supervisor(notifier, task)
    # (A ping sent just before the block may be read a little later.)
    during = [t for t in fake.times("WATCHDOG=1") if blocked_at + 0.15 < t < unblocked_at]
    assert during == []


async def test_status_is_sent_when_it_changes(fake_systemd, monkeypatch):
    monkeypatch.setattr(systemd, "STATUS_POLL_S", 0.02)
    fake, path = fake_systemd
    service = FakeService()
    service.ready.set()
    notifier, task = await run_supervisor(path, service, watchdog_s=None)
    try:
        await fake.wait_for("READY=1")
        for status in ("waiting for devices: 1 of 2 online", "round 1/5: 2 devices training"):
            service.status = status
            await wait_until(lambda: service.status in fake.statuses(), 2.0)
        await asyncio.sleep(0.1)
    finally:
        await stop_supervisor(notifier, task)
    assert fake.statuses() == [
        "starting",
        "waiting for devices: 1 of 2 online",
        "round 1/5: 2 devices training",
    ]
    assert fake.times("WATCHDOG=1") == []  # no WATCHDOG_USEC, no pings


async def test_a_failing_health_check_counts_as_unhealthy(fake_systemd):
    fake, path = fake_systemd

    class Broken(FakeService):
        def health_problem(self) -> str | None:
            raise RuntimeError("bug")

    service = Broken()
    service.ready.set()
    notifier, task = await run_supervisor(path, service, watchdog_s=0.2)
    try:
        await wait_until(lambda: any("health check failed" in s for s in fake.statuses()), 2.0)
        await asyncio.sleep(0.3)
        assert not task.done()  # the supervision goes on
    finally:
        await stop_supervisor(notifier, task)
    assert fake.times("WATCHDOG=1") == []


# --- runtime.run ------------------------------------------------------------------------------


def run_until_sigterm(service: FakeService, after_s: float) -> None:
    async def main() -> None:
        service.status = "serving"
        service.ready.set()
        asyncio.get_running_loop().call_later(after_s, os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.sleep(30)

    with pytest.raises(asyncio.CancelledError):
        runtime.run(main, service=service)


def test_runtime_reports_ready_pings_and_stopping(fake_systemd, monkeypatch):
    fake, path = fake_systemd
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    run_until_sigterm(FakeService(), after_s=0.6)
    time.sleep(0.1)  # the reader thread stamps what is already queued
    texts = [text for _, text in fake.messages]
    assert texts[0] == "READY=1\nSTATUS=serving"
    assert texts[-1] == "STOPPING=1"
    assert texts.count("STOPPING=1") == 1
    assert texts.count("WATCHDOG=1") >= 3


def test_runtime_leaves_a_foreign_watchdog_alone(fake_systemd, monkeypatch):
    fake, path = fake_systemd
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    run_until_sigterm(FakeService(), after_s=0.4)
    time.sleep(0.1)
    assert len(fake.times("READY=1")) == 1
    assert fake.times("WATCHDOG=1") == []


def test_runtime_without_notify_socket_runs_as_before(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    service = FakeService()

    async def main() -> int:
        service.ready.set()
        return 7

    assert runtime.run(main, service=service) == 7


def test_runtime_rejects_a_bad_notify_socket(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "not/absolute")
    started = []

    async def main() -> None:
        started.append(True)

    with pytest.raises(SystemdError, match="NOTIFY_SOCKET"):
        runtime.run(main, service=FakeService())
    assert started == []


# --- the services -----------------------------------------------------------------------------


async def test_a_wedged_compute_step_makes_the_agent_unhealthy(mosquitto, monkeypatch):
    monkeypatch.setattr(agent_module, "COMPUTE_STALL_S", 0.2)
    agent = agent_module.DeviceAgent(device_settings(mosquitto, 0, 1, exit_on_finish=False))
    run = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(10):
            await agent.ready.wait()
        assert agent.health_problem() is None
        assert agent.status_line() == "waiting for the edge"
        wedged = asyncio.create_task(agent.trainer.run(time.sleep, 0.6))
        await wait_until(lambda: agent.health_problem() is not None, 2.0)
        assert "compute step" in (agent.health_problem() or "")
        await wedged
        assert agent.health_problem() is None
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    assert agent.health_problem() == "the MQTT connection loop has ended"


async def spawn(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    quiet = asyncio.subprocess.DEVNULL
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ares", *args, stdin=quiet, stdout=quiet, stderr=quiet,
        env={**os.environ, **env},
    )  # fmt: skip


async def test_edge_and_agent_processes_notify_systemd(mosquitto, tmp_path):
    """The real commands: READY=1, then WATCHDOG=1 pings, then STOPPING=1 on SIGTERM."""
    edge_fake = FakeSystemd(str(tmp_path / "edge.sock"))
    device_fake = FakeSystemd(str(tmp_path / "device.sock"))
    watchdog = {"WATCHDOG_USEC": "1000000"}  # a ping every 0.5 s
    edge = await spawn(
        "edge", "--broker", mosquitto.url, "--min-devices", "2", "--torch-threads", "1",
        "--checkpoint", str(tmp_path / "edge.ckpt"),
        env={"NOTIFY_SOCKET": str(tmp_path / "edge.sock"), **watchdog},
    )  # fmt: skip
    device = await spawn(
        "device", "--broker", mosquitto.url, "--id", "dev-0", "--torch-threads", "1",
        env={"NOTIFY_SOCKET": str(tmp_path / "device.sock"), **watchdog},
    )  # fmt: skip
    try:
        for fake in (edge_fake, device_fake):
            await fake.wait_for("READY=1", timeout_s=120)
            ready_at = fake.times("READY=1")[0]
            await fake.wait_for("WATCHDOG=1", count=3, timeout_s=10)
            assert fake.times("WATCHDOG=1")[0] >= ready_at  # no pings before READY=1
        # The edge waits for a second device; it has seen the first one register.
        await wait_until(lambda: "waiting for devices: 1 of 2 online" in edge_fake.statuses(), 30)
        for process, fake in ((edge, edge_fake), (device, device_fake)):
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                assert await process.wait() == 0
            await fake.wait_for("STOPPING=1", timeout_s=2)
            assert len(fake.times("READY=1")) == 1
    finally:
        for process in (edge, device):
            if process.returncode is None:
                process.kill()
                await process.wait()
        edge_fake.close()
        device_fake.close()
