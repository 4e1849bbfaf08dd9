"""LinkLab: real namespaces and tbf-shaped veths; throughput measured with real TCP.

Needs root and working ``ip netns``/``tc``; skipped otherwise. The whole file runs in ~10 s.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.links import (
    EmulatedLink,
    LinkLab,
    LinkLabError,
    NetemUnavailableError,
    cleanup_stale,
    link_mode,
    tbf_params,
)
from testbed.schedule import RateSchedule

SUPPORT = link_mode()
needs_tc = pytest.mark.skipif(
    SUPPORT.mode != "tc",
    reason=f"needs root on Linux with working `ip netns` and `tc`: {SUPPORT.reason}",
)
# Not the demo's default subnet, and per pid, so a running demo or a parallel test run does not
# collide with ours (a lab refuses a subnet already in use).
SUBNET = f"10.213.{os.getpid() % 256}.0/24"
HOST_IP, FIRST_DEVICE_IP = SUBNET.replace(".0/24", ".1"), SUBNET.replace(".0/24", ".2")
TOLERANCE = 0.15  # TCP/IP headers cost ~4.5 % of a 1514-byte frame; the rest is slack

# The receiver measures from its first byte to EOF, so the tbf burst and the sender's
# connection setup do not count; it prints Mbit/s of payload.
UPLINK_CLIENT = """
import socket, sys
data = b"x" * int(sys.argv[3])
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as s:
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # wait until the server has everything, so no data is left in flight
"""
DOWNLINK_CLIENT = """
import socket, sys, time
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as s:
    n, first = 0, None
    while chunk := s.recv(65536):
        first = first or time.monotonic()
        n += len(chunk)
    print(n * 8 / (time.monotonic() - first) / 1e6)
"""


def _in_ns(link: EmulatedLink, script: str, *args: object) -> str:
    cmd = [*link.exec_prefix(), sys.executable, "-c", script, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout


def _listener(host: str) -> socket.socket:
    server = socket.create_server((host, 0))
    server.settimeout(30)
    return server


def measure_uplink(link: EmulatedLink, nbytes: int) -> float:
    """Goodput (Mbit/s) of ``nbytes`` sent from inside the namespace to host_ip."""
    result: list[float] = []

    def serve(server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            received, first = 0, 0.0
            while chunk := conn.recv(65536):
                first = first or time.monotonic()
                received += len(chunk)
            result.append(received * 8 / (time.monotonic() - first) / 1e6)
            assert received == nbytes
            conn.sendall(b"k")

    with _listener(link.host_ip) as server:
        thread = threading.Thread(target=serve, args=(server,))
        thread.start()
        _in_ns(link, UPLINK_CLIENT, link.host_ip, server.getsockname()[1], nbytes)
        thread.join(30)
    return result[0]


def measure_downlink(link: EmulatedLink, nbytes: int) -> float:
    """Goodput (Mbit/s) of ``nbytes`` sent from host_ip to a client inside the namespace."""

    def serve(server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"y" * nbytes)

    with _listener(link.host_ip) as server:
        thread = threading.Thread(target=serve, args=(server,))
        thread.start()
        out = _in_ns(link, DOWNLINK_CLIENT, link.host_ip, server.getsockname()[1])
        thread.join(30)
    return float(out)


def our_leftovers(pid: int) -> list[str]:
    """Names of namespaces and links this pid's labs created that still exist."""
    ours = re.compile(rf"^ar{pid}(?:br|[hdp]\d+|-)")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10)
    names = [line.split()[0] for line in netns.stdout.splitlines() if line.strip()]
    names += [line.split(": ")[1].split("@")[0] for line in links.stdout.splitlines()]
    return [name for name in names if ours.match(name)]


def device_qdisc(link: EmulatedLink) -> str:
    """``tc qdisc show`` of the device end (the uplink), inside its namespace."""
    cmd = ["tc", "-n", link.netns, "qdisc", "show", "dev", link.device_if]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout


def assert_close(measured: float, shaped: float) -> None:
    ratio = measured / shaped
    print(f"shaped {shaped:g} Mbit/s -> goodput {measured:.2f} Mbit/s ({ratio:.1%})")
    assert abs(ratio - 1) <= TOLERANCE, f"goodput {measured:.2f} vs shaped {shaped:g} Mbit/s"


@pytest.fixture
def lab() -> Iterator[LinkLab]:
    with LinkLab(subnet=SUBNET) as lab:
        yield lab
    assert our_leftovers(os.getpid()) == []


# ---------------------------------------------------------------------------------------------
# Pure


def test_tbf_params_sized_for_rate() -> None:
    low, high = tbf_params(1), tbf_params(100)
    assert low.rate_bps == 1_000_000
    assert high.rate_bps == 100_000_000
    assert low.burst_bytes >= 2 * 1514  # a couple of frames even at low rates
    assert high.burst_bytes >= 100e6 / 8 / 1000  # one 1 ms tick: hrtimers, small bursts
    assert high.limit_bytes - high.burst_bytes >= 100e6 / 8 * 0.05  # >= 50 ms of queue
    with pytest.raises(LinkLabError, match="> 0"):
        tbf_params(0)


# ---------------------------------------------------------------------------------------------
# Real links


@needs_tc
def test_uplink_shaping_and_set_rate(lab: LinkLab) -> None:
    link = lab.add_device("dev-a", RateSchedule.constant(8))
    assert (lab.host_ip, link.device_ip) == (HOST_IP, FIRST_DEVICE_IP)
    assert link.netns == f"ar{os.getpid()}-dev-a"
    assert link.exec_prefix() == ["ip", "netns", "exec", link.netns]
    slow = measure_uplink(link, 3_000_000)
    assert_close(slow, 8)
    link.set_rate(uplink_mbps=20)
    fast = measure_uplink(link, 3_000_000)
    assert_close(fast, 20)
    assert fast > 2 * slow


@needs_tc
def test_downlink_shaping(lab: LinkLab) -> None:
    link = lab.add_device("dev-b", RateSchedule.constant(30), RateSchedule.constant(12))
    assert_close(measure_downlink(link, 2_000_000), 12)


@needs_tc
async def test_async_lab_runs_schedules() -> None:
    # Scale 2: the step at 1 s comes at 0.5 s, at twice the rates.
    schedule = RateSchedule.steps([(0, 4), (1.0, 16)])
    async with LinkLab(subnet=SUBNET) as lab:
        link = lab.add_device("dev-c", schedule, RateSchedule.constant(5))
        assert (link.uplink_mbps, link.downlink_mbps) == (4, 5)  # unscaled until run
        task = asyncio.create_task(lab.run_schedules(time_scale=2))
        await asyncio.sleep(0.25)  # well after t=0 (~10 ms of tc), well before the step
        assert (link.uplink_mbps, link.downlink_mbps) == (8, 10)
        await asyncio.wait_for(task, 2)
        assert link.uplink_mbps == 32
        assert "rate 32Mbit" in await asyncio.to_thread(device_qdisc, link)
    assert our_leftovers(os.getpid()) == []


@needs_tc
def test_exit_cleans_up_after_exception() -> None:
    def build_then_fail() -> None:
        with LinkLab(subnet=SUBNET) as lab:
            lab.add_device("dev-d", RateSchedule.constant(5))
            lab.add_device("dev-e", RateSchedule.constant(5))
            assert len(our_leftovers(os.getpid())) >= 5  # bridge, 2 host ends, 2 namespaces
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_then_fail()
    assert our_leftovers(os.getpid()) == []


@needs_tc
def test_one_lab_per_process_and_clear_errors(lab: LinkLab) -> None:
    with pytest.raises(LinkLabError, match="another LinkLab"), LinkLab(subnet="10.214.0.0/24"):
        pass
    lab.add_device("dev-f", RateSchedule.constant(5))
    with pytest.raises(LinkLabError, match="already exists"):
        lab.add_device("dev-f", RateSchedule.constant(5))


@needs_tc
@pytest.mark.skipif(SUPPORT.netem, reason="this kernel has netem")
def test_delay_without_netem_raises(lab: LinkLab) -> None:
    with pytest.raises(NetemUnavailableError, match="no netem qdisc"):
        lab.add_device("dev-g", RateSchedule.constant(5), delay_ms=20)
    with pytest.raises(NetemUnavailableError, match="loss_pct=1"):
        lab.add_device("dev-g", RateSchedule.constant(5), loss_pct=1)
    assert "dev-g" not in lab.links


@needs_tc
@pytest.mark.skipif(not SUPPORT.netem, reason="this kernel has no netem qdisc")
def test_delay_with_netem_installs_it(lab: LinkLab) -> None:
    link = lab.add_device("dev-g", RateSchedule.constant(5), delay_ms=20, loss_pct=1)
    qdisc = device_qdisc(link)
    assert "netem" in qdisc
    assert "tbf" in qdisc
    link.set_rate(7, 7)


def _make_leftovers(pid: int) -> list[str]:
    """What a run with ``pid`` that died mid-way leaves: bridge, veth pair, namespace."""
    names = [f"ar{pid}br", f"ar{pid}h0", f"ar{pid}-dev"]
    commands = [
        ["ip", "link", "add", names[0], "type", "bridge"],
        ["ip", "netns", "add", names[2]],
        ["ip", "link", "add", names[1], "type", "veth", "peer", "name", f"ar{pid}d0"],
        ["ip", "link", "set", names[1], "master", names[0]],
        ["ip", "link", "set", f"ar{pid}d0", "netns", names[2]],
    ]
    for command in commands:
        subprocess.run(command, check=True, capture_output=True, timeout=10)
    return names


def _remove(names: list[str]) -> None:
    for name in names:
        kind = ["netns", "del"] if "-" in name else ["link", "del"]
        subprocess.run(["ip", *kind, name], capture_output=True, timeout=10, check=False)


@needs_tc
def test_cleanup_stale_removes_dead_pids_only() -> None:
    # No process can have a pid above pid_max, so this one is certainly dead.
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    alive = os.getpid()
    dead_names = _make_leftovers(dead)
    live_names = [f"ar{alive}-keep"]
    subprocess.run(["ip", "netns", "add", live_names[0]], check=True, timeout=10)
    try:
        removed = cleanup_stale()
        # (A parallel run's own cleanup_stale may have beaten us to some of them.)
        assert [name for name in removed if re.match(rf"ar{alive}\D", name)] == []
        assert our_leftovers(dead) == []
        assert our_leftovers(alive) == live_names
    finally:
        _remove(dead_names + live_names)
