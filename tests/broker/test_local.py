"""LocalBroker against the real mosquitto binary: lifecycle, ports, failures, cleanup."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

import broker.local
from broker import (
    BrokerConfig,
    BrokerError,
    LocalBroker,
    async_probe_mqtt,
    free_port,
    parse_broker_url,
    probe_mqtt,
)
from broker.ports import owns_listening_port

pytestmark = pytest.mark.broker

REPO_ROOT = Path(__file__).resolve().parents[2]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by init) counts as gone."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.exists() and sys.platform.startswith("linux"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        return state not in {"Z", "X"}
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def fake_binary(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "fake-mosquitto"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(0o755)
    return str(exe)


@pytest.fixture
def occupied_port() -> Iterator[int]:
    """A loopback port held by a listening socket for the duration of the test."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


# -- lifecycle ------------------------------------------------------------------------


def test_start_stop_leaves_no_process_and_no_workdir() -> None:
    b = LocalBroker()
    b.start()
    pid, workdir = b.pid, b.workdir
    assert pid is not None
    assert workdir is not None
    assert b.is_running
    assert pid_alive(pid)
    assert (workdir / "mosquitto.conf").is_file()
    b.stop()
    assert not b.is_running
    assert b.pid is None
    assert not pid_alive(pid)
    assert not workdir.exists()
    b.stop()  # idempotent


def test_start_is_fast() -> None:
    # The fixture is function-scoped on the strength of this.
    starts = []
    for _ in range(3):
        t0 = time.perf_counter()
        with LocalBroker():
            starts.append(time.perf_counter() - t0)
    assert min(starts) < 0.2


def test_url_host_port(mosquitto: LocalBroker) -> None:
    assert mosquitto.host == "127.0.0.1"
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert parse_broker_url(mosquitto.url) == ("127.0.0.1", mosquitto.port, False)


def test_port_unknown_before_start() -> None:
    with pytest.raises(BrokerError, match="start"):
        _ = LocalBroker().port


def test_start_twice_is_a_noop(mosquitto: LocalBroker) -> None:
    pid = mosquitto.pid
    assert mosquitto.start() is mosquitto
    assert mosquitto.pid == pid


def test_runs_in_its_own_session(mosquitto: LocalBroker) -> None:
    # A terminal's Ctrl-C goes to our process group only; we stop the broker ourselves.
    pid = mosquitto.pid
    assert pid is not None
    assert os.getsid(pid) == pid
    assert os.getpgid(pid) != os.getpgid(0)


def test_two_brokers_at_once_get_different_ports() -> None:
    with LocalBroker() as a, LocalBroker() as b:
        assert a.port != b.port
        assert probe_mqtt(a.host, a.port) == 0
        assert probe_mqtt(b.host, b.port) == 0


def test_explicit_port_and_workdir(tmp_path: Path) -> None:
    port = free_port()
    workdir = tmp_path / "run"
    with LocalBroker(BrokerConfig(port=port), workdir=workdir) as b:
        assert b.port == port
        assert probe_mqtt("127.0.0.1", port) == 0
        assert "New client connected" in b.log_tail()
    assert (workdir / "mosquitto.log").is_file()  # a given work dir is kept


def test_exception_in_with_block_stops_broker() -> None:
    seen: list[tuple[int | None, Path | None]] = []

    def body() -> None:
        with LocalBroker() as b:
            seen.append((b.pid, b.workdir))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        body()
    [(pid, workdir)] = seen
    assert pid is not None
    assert workdir is not None
    assert not pid_alive(pid)
    assert not workdir.exists()


# -- chaos: kill and restart ------------------------------------------------------------


def test_kill_then_restart_on_same_port() -> None:
    with LocalBroker() as b:
        port, pid = b.port, b.pid
        assert pid is not None
        b.kill()
        assert not b.is_running
        assert not pid_alive(pid)
        with pytest.raises(ConnectionRefusedError):
            probe_mqtt("127.0.0.1", port, timeout=0.5)
        assert b.workdir is not None
        assert b.workdir.exists()
        b.restart()
        assert b.is_running
        assert b.port == port
        assert b.pid != pid
        assert probe_mqtt("127.0.0.1", port) == 0
        assert b.log_tail().count("New client connected") >= 2  # both runs' log kept


def test_restart_while_running_keeps_port(mosquitto: LocalBroker) -> None:
    port, pid = mosquitto.port, mosquitto.pid
    mosquitto.restart()
    assert mosquitto.port == port
    assert mosquitto.pid != pid
    assert pid is not None
    assert not pid_alive(pid)
    assert probe_mqtt(mosquitto.host, port) == 0


def test_restart_before_start_is_an_error() -> None:
    with pytest.raises(BrokerError, match="start"):
        LocalBroker().restart()


def test_start_after_stop_reuses_the_port() -> None:
    b = LocalBroker()
    try:
        port = b.start().port
        b.stop()
        assert b.start().port == port
    finally:
        b.stop()


async def test_retained_message_survives_restart_with_persistence() -> None:
    async with LocalBroker(BrokerConfig(persistence=True)) as b:
        async with aiomqtt.Client(b.host, b.port) as client:
            await client.publish("ares/v1/edge/plan", b"plan-1", qos=1, retain=True)
        await b.arestart()
        async with aiomqtt.Client(b.host, b.port) as client:
            await client.subscribe("ares/v1/edge/plan", qos=1)
            async with asyncio.timeout(5.0):
                message = await anext(aiter(client.messages))
        assert message.payload == b"plan-1"
        assert message.retain


# -- failures -----------------------------------------------------------------------------


def test_early_exit_reports_log_tail(tmp_path: Path) -> None:
    b = LocalBroker(binary=fake_binary(tmp_path, 'echo "Error: boom in config" >&2\nexit 3'))
    with pytest.raises(BrokerError, match="code 3") as info:
        b.start()
    assert "boom in config" in str(info.value)
    assert not b.is_running
    assert b.workdir is None


def test_silent_process_times_out_and_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    b = LocalBroker(binary=fake_binary(tmp_path, f"echo $$ > {pidfile}\nexec sleep 30"))
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match="did not answer MQTT"):
        b.start(timeout=0.3)
    assert time.monotonic() - t0 < 3.0
    assert not pid_alive(int(pidfile.read_text()))


def test_explicit_port_in_use_is_an_error(occupied_port: int) -> None:
    b = LocalBroker(BrokerConfig(port=occupied_port))
    with pytest.raises(BrokerError, match="Address already in use"):
        b.start()
    assert not b.is_running


def test_chosen_port_taken_meanwhile_retries_on_another(
    occupied_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate the race: free_port() answers a port someone grabbed before mosquitto binds.
    answers = iter([occupied_port])
    monkeypatch.setattr(
        broker.local, "free_port", lambda host: next(answers, None) or free_port(host)
    )
    with LocalBroker() as b:
        assert b.port != occupied_port
        assert probe_mqtt(b.host, b.port) == 0


def test_chosen_port_taken_by_another_broker_is_not_mistaken_for_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The likeliest squatter is another test's broker: it answers CONNECT too.
    with LocalBroker() as other:
        answers = iter([other.port])
        monkeypatch.setattr(
            broker.local, "free_port", lambda host: next(answers, None) or free_port(host)
        )
        with LocalBroker() as b:
            assert b.port != other.port
            assert b.pid is not None
            assert owns_listening_port(b.pid, b.port)
            assert other.pid is not None
            assert owns_listening_port(other.pid, other.port)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_owns_listening_port(mosquitto: LocalBroker) -> None:
    assert mosquitto.pid is not None
    assert owns_listening_port(mosquitto.pid, mosquitto.port) is True
    assert owns_listening_port(mosquitto.pid, free_port()) is False
    assert owns_listening_port(os.getpid(), mosquitto.port) is False


def test_restart_fails_if_port_was_taken() -> None:
    with LocalBroker() as b:
        port = b.port
        b.kill()
        with (
            socket.create_server(("127.0.0.1", port)),
            pytest.raises(BrokerError, match=f"cannot restart on port {port}"),
        ):
            b.restart()
        assert not b.is_running


# -- async ----------------------------------------------------------------------------------


async def test_async_context_manager() -> None:
    async with LocalBroker() as b:
        pid = b.pid
        assert pid is not None
        async with asyncio.timeout(2.0):
            assert await async_probe_mqtt(b.host, b.port) == 0
        b.kill()
        await b.arestart()
        assert await async_probe_mqtt(b.host, b.port) == 0
        pid2 = b.pid
    assert pid2 is not None
    assert not pid_alive(pid)
    assert not pid_alive(pid2)


async def test_async_start_does_not_block_the_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    try:
        async with LocalBroker():
            pass
    finally:
        task.cancel()
    assert ticks >= 2


# -- backstops: atexit and parent death ---------------------------------------------------

_CHILD = """
import os, signal, sys
from broker import LocalBroker
b = LocalBroker().start()
print(b.pid, b.workdir, flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _run_child(mode: str) -> tuple[int, Path]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHILD), mode],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    first = proc.stdout.split()
    assert len(first) == 2, proc.stderr
    return int(first[0]), Path(first[1])


def test_atexit_stops_a_broker_nobody_stopped() -> None:
    pid, workdir = _run_child("exit")
    assert wait_gone(pid)
    assert not workdir.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_broker_dies_with_a_killed_parent() -> None:
    pid, workdir = _run_child("kill")
    try:
        assert wait_gone(pid), "mosquitto outlived its SIGKILLed parent"
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)  # atexit cannot run after SIGKILL
