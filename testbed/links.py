"""Emulated links: each device in its own network namespace, joined to the broker by a shaped veth.

Layout (root namespace on the left)::

    broker -- bridge ar{pid}br (host_ip) -- ar{pid}h{i} ==veth== ar{pid}d{i} -- netns ar{pid}-{name}
                                             ^ tbf: downlink        ^ tbf: uplink

Every byte a device sends leaves through the device end's qdisc (its uplink) and every byte it
receives leaves the host end's qdisc (its downlink), so shaping is real, not modelled. Rates use
``tbf``; delay and loss need ``netem``, which some kernels lack: asking for them there raises
:class:`NetemUnavailableError` rather than silently running without.

Everything a :class:`LinkLab` creates is named ``ar{pid}...`` after the owning process, so a
later run can tell leftovers of dead processes apart (:func:`cleanup_stale`), and an atexit hook
closes labs a program forgot.
"""

from __future__ import annotations

import asyncio
import atexit
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

from schemas.errors import AresError
from testbed.schedule import RateSchedule

__all__ = [
    "EmulatedLink",
    "LinkLab",
    "LinkLabError",
    "LinkSupport",
    "NetemUnavailableError",
    "cleanup_stale",
    "link_mode",
    "tbf_params",
]

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 10.0
MTU_FRAME_BYTES = 1514  # an Ethernet frame at MTU 1500, as tbf counts it
ASSUMED_HZ = 1000  # tbf waits on high-resolution timers: a 1 ms bucket keeps bursts small
# At low rates the burst floor is what absorbs a late timer wakeup (4 frames lost up to 18% of
# an 8 Mbit/s link on a busy machine); 8 frames cost at most ~9% on a 131 kB message.
BURST_FRAMES = 8
QUEUE_LATENCY_S = 0.1  # enough queue that TCP is slowed by the rate, not by tail drops

_LINK_NAME = re.compile(r"^ar(\d+)(?:br|[hdp]\d{1,3})$")
_NETNS_NAME = re.compile(r"^ar(\d+)-")

# The one piece of module state: labs still open, for the atexit backstop.
_OPEN_LABS: set[LinkLab] = set()


class LinkLabError(AresError, RuntimeError):
    """A namespace, veth or qdisc operation failed (the message holds command and stderr)."""


class NetemUnavailableError(LinkLabError):
    """Delay or loss was asked for but this kernel has no ``netem`` qdisc."""


# ---------------------------------------------------------------------------------------------
# Commands


def _run(cmd: Sequence[str], timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Run ``cmd``; its stdout, or LinkLabError naming the command and its stderr."""
    try:
        done = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LinkLabError(f"`{' '.join(cmd)}` timed out after {timeout_s:g} s") from exc
    except OSError as exc:
        raise LinkLabError(f"`{' '.join(cmd)}` could not run: {exc}") from exc
    if done.returncode != 0:
        stderr = done.stderr.strip() or done.stdout.strip() or "(no output)"
        raise LinkLabError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {stderr}")
    return done.stdout


def _run_quiet(cmd: Sequence[str]) -> LinkLabError | None:
    """Run a teardown command; its error instead of raising, so teardown goes on."""
    try:
        _run(cmd)
    except LinkLabError as exc:
        return exc
    return None


# ---------------------------------------------------------------------------------------------
# Shaping parameters


@dataclass(frozen=True, slots=True)
class TbfParams:
    rate_bps: int
    burst_bytes: int
    limit_bytes: int

    def args(self) -> list[str]:
        return [
            "tbf",
            "rate",
            f"{self.rate_bps}bit",
            "burst",
            str(self.burst_bytes),
            "limit",
            str(self.limit_bytes),
        ]


def tbf_params(mbps: float) -> TbfParams:
    """tbf settings for ``mbps``.

    burst: at least one 1 ms tick's worth of bytes (tbf waits on high-resolution timers) and at
    least 8 frames (or a single GSO burst cannot pass, and late timers waste the rate); no
    bigger, since the burst lets a link briefly exceed its rate: with a 10 ms bucket, a 131 kB
    message after a pause crossed a 20 Mbit/s link 18% faster than the rate, and the devices'
    estimates said so. limit: the burst plus ~100 ms of queue (and at least 8 frames at low
    rates) so TCP's bursts queue instead of being tail-dropped.
    """
    if not mbps > 0:
        raise LinkLabError(f"a link rate must be > 0 Mbit/s, got {mbps!r}")
    rate_bps = max(int(mbps * 1e6), 8)
    rate_bytes_s = rate_bps / 8
    burst = max(int(rate_bytes_s / ASSUMED_HZ), BURST_FRAMES * MTU_FRAME_BYTES)
    queue = max(int(rate_bytes_s * QUEUE_LATENCY_S), 8 * MTU_FRAME_BYTES)
    return TbfParams(rate_bps=rate_bps, burst_bytes=burst, limit_bytes=burst + queue)


# ---------------------------------------------------------------------------------------------
# Support probe


@dataclass(frozen=True, slots=True)
class LinkSupport:
    """How links can be emulated here: ``tc`` (namespaces + qdiscs) or an in-process
    ``token-bucket`` fallback, why, and whether ``netem`` (delay/loss) exists."""

    mode: Literal["tc", "token-bucket"]
    reason: str
    netem: bool = False


def link_mode() -> LinkSupport:
    """Probe (each call; it takes tens of ms) whether namespaces, veths and tbf work here."""
    if sys.platform != "linux":
        return LinkSupport("token-bucket", f"network namespaces need Linux, not {sys.platform}")
    if os.geteuid() != 0:
        return LinkSupport("token-bucket", "network namespaces and tc need root")
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return LinkSupport("token-bucket", f"{' and '.join(missing)} not installed (iproute2)")
    try:
        netem = _probe_kernel(f"ar{os.getpid()}")
    except LinkLabError as exc:
        return LinkSupport("token-bucket", f"tc/netns probe failed: {exc}")
    reason = "root on Linux; netns, veth and tbf work" + (
        "" if netem else "; no netem qdisc in this kernel, so no delay/loss"
    )
    return LinkSupport("tc", reason, netem=netem)


def _probe_kernel(prefix: str) -> bool:
    """Create and remove a throwaway netns and veth with a tbf; whether netem also works."""
    netns, host_if, peer_if = f"{prefix}-_probe", f"{prefix}p0", f"{prefix}p1"
    try:
        _run(["ip", "netns", "add", netns])
        _run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if])
        _run(["tc", "qdisc", "add", "dev", host_if, "root", *tbf_params(10).args()])
        try:
            _run(["tc", "qdisc", "add", "dev", peer_if, "root", "netem", "delay", "1ms"])
        except LinkLabError as exc:
            log.debug("netem unavailable: %s", exc)
            return False
        return True
    finally:
        _run_quiet(["ip", "link", "del", host_if])
        _run_quiet(["ip", "netns", "del", netns])


# ---------------------------------------------------------------------------------------------
# Stale state


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OverflowError:
        return False
    return True


def _stale_names(names: Sequence[str], pattern: re.Pattern[str]) -> list[str]:
    stale = []
    for name in names:
        match = pattern.match(name)
        if match and not _pid_alive(int(match.group(1))):
            stale.append(name)
    return stale


def _list_links() -> list[str]:
    return [
        str(entry["ifname"]) for entry in json.loads(_run(["ip", "-j", "link", "show"]) or "[]")
    ]


def _list_netns() -> list[str]:
    # Lines look like "ar123-nano (id: 4)"; only the name matters.
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line.strip()]


def cleanup_stale() -> list[str]:
    """Remove ``ar{pid}`` namespaces and links whose pid is dead; the names removed.

    A crashed run (SIGKILL, power loss) cannot clean up after itself; every new lab calls this
    so the leftovers live only until the next run.
    """
    removed: list[str] = []
    # Host veth ends first: deleting one removes its peer, wherever the peer lives.
    links = _stale_names(_list_links(), _LINK_NAME)
    for name in sorted(links, key=lambda n: n.endswith("br")):  # bridges after their ports
        if _run_quiet(["ip", "link", "del", name]) is None:
            removed.append(name)
    for name in _stale_names(_list_netns(), _NETNS_NAME):
        error = _run_quiet(["ip", "netns", "del", name])
        if error is None:
            removed.append(name)
        else:
            log.warning("could not remove stale namespace %s: %s", name, error)
    if removed:
        log.info("removed leftovers of dead testbed runs: %s", ", ".join(removed))
    return removed


# ---------------------------------------------------------------------------------------------
# Links


@dataclass(slots=True, eq=False)
class EmulatedLink:
    """One device's namespace and its shaped veth; made by :meth:`LinkLab.add_device`."""

    name: str
    netns: str
    device_ip: str
    host_ip: str
    host_if: str
    device_if: str
    uplink: RateSchedule
    downlink: RateSchedule
    delay_ms: float = 0.0
    loss_pct: float = 0.0
    uplink_mbps: float = field(init=False, default=0.0)
    downlink_mbps: float = field(init=False, default=0.0)

    def exec_prefix(self) -> list[str]:
        """Prepend to a command line to run it inside this device's namespace."""
        return ["ip", "netns", "exec", self.netns]

    @property
    def _netem(self) -> bool:
        return self.delay_ms > 0 or self.loss_pct > 0

    def _tc_uplink(self) -> list[str]:
        return ["tc", "-n", self.netns, "qdisc"]

    def shape(self) -> None:
        """Install the qdiscs at the schedules' initial rates (called once, on creation)."""
        for tc, dev in ((self._tc_uplink(), self.device_if), (["tc", "qdisc"], self.host_if)):
            if self._netem:
                # netem at the root delays/drops; the tbf below it limits the rate.
                _run([*tc, "add", "dev", dev, "root", "handle", "1:", *self._netem_args()])
        self._apply_rates(self.uplink.initial_mbps, self.downlink.initial_mbps, verb="add")

    def _netem_args(self) -> list[str]:
        args = ["netem"]
        if self.delay_ms > 0:
            args += ["delay", f"{self.delay_ms:g}ms"]
        if self.loss_pct > 0:
            args += ["loss", f"{self.loss_pct:g}%"]
        return args

    def set_rate(
        self, uplink_mbps: float | None = None, downlink_mbps: float | None = None
    ) -> None:
        """Change the uplink and/or downlink rate now (None leaves that direction alone)."""
        self._apply_rates(uplink_mbps, downlink_mbps, verb="replace")

    def _apply_rates(
        self, uplink_mbps: float | None, downlink_mbps: float | None, verb: str
    ) -> None:
        # "replace" on an existing tbf with the same handle changes it in place: no queue reset.
        parent = ["parent", "1:1"] if self._netem else ["root"]
        if uplink_mbps is not None:
            args = tbf_params(uplink_mbps).args()
            _run([*self._tc_uplink(), verb, "dev", self.device_if, *parent, "handle", "10:", *args])
            self.uplink_mbps = uplink_mbps
        if downlink_mbps is not None:
            args = tbf_params(downlink_mbps).args()
            _run(["tc", "qdisc", verb, "dev", self.host_if, *parent, "handle", "10:", *args])
            self.downlink_mbps = downlink_mbps

    def events(self, time_scale: float) -> list[tuple[float, float | None, float | None]]:
        """``(t_s, uplink_mbps | None, downlink_mbps | None)`` at every change, on the scaled
        clock, with both directions' changes at one instant merged."""
        merged: dict[float, list[float | None]] = {}
        for index, schedule in enumerate((self.uplink, self.downlink)):
            for t_s, mbps in schedule.scaled(time_scale).changes():
                merged.setdefault(t_s, [None, None])[index] = mbps
        return [(t_s, up, down) for t_s, (up, down) in sorted(merged.items())]


# ---------------------------------------------------------------------------------------------
# The lab


class LinkLab:
    """Owns a bridge, and per device a namespace, veth pair and qdiscs; removes them on exit.

    Use ``with LinkLab() as lab:`` or ``async with``. One lab per process at a time, since the
    names derive from the pid.
    """

    def __init__(self, subnet: str = "10.203.0.0/24") -> None:
        self.network = ipaddress.IPv4Network(subnet)
        hosts = self.network.hosts()
        self.host_ip = str(next(hosts))
        self._free_ips = hosts
        self.prefix = f"ar{os.getpid()}"
        self.bridge = f"{self.prefix}br"
        self.links: dict[str, EmulatedLink] = {}
        self.support: LinkSupport | None = None
        self._open = False

    # -- context management --------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(raise_errors=exc is None)

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: a cancelled task must still tear its namespaces down.
        await asyncio.shield(asyncio.to_thread(self.close, raise_errors=exc is None))

    def open(self) -> None:
        """Clean stale runs, check support, create the bridge with ``host_ip``."""
        if self._open:
            raise LinkLabError("this LinkLab is already open")
        if any(lab.prefix == self.prefix for lab in _OPEN_LABS):
            raise LinkLabError(f"another LinkLab is open in this process (prefix {self.prefix})")
        support = link_mode()
        if support.mode != "tc":
            raise LinkLabError(f"cannot emulate links with tc here: {support.reason}")
        self.support = support
        cleanup_stale()
        self._check_subnet_free()
        self._open = True
        _OPEN_LABS.add(self)
        try:
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(
                [
                    "ip",
                    "addr",
                    "add",
                    f"{self.host_ip}/{self.network.prefixlen}",
                    "dev",
                    self.bridge,
                ]
            )
            _run(["ip", "link", "set", self.bridge, "up"])
        except BaseException:
            self.close(raise_errors=False)
            raise

    def _check_subnet_free(self) -> None:
        # Two bridges in one subnet would make routing to host_ip ambiguous.
        used = _run(["ip", "-o", "-4", "addr", "show", "to", str(self.network)]).strip()
        if used:
            raise LinkLabError(
                f"subnet {self.network} is already in use here: {used.splitlines()[0]}"
            )

    def close(self, raise_errors: bool = True) -> None:
        """Remove every veth, namespace and the bridge (qdiscs go with their devices).

        Tries everything even when a step fails; then raises the first failure unless
        ``raise_errors`` is False (as when an exception is already on its way).
        """
        if not self._open:
            return
        self._open = False
        _OPEN_LABS.discard(self)
        errors = []
        for link in self.links.values():
            # The host end first: deleting it deletes its peer even if a process still holds
            # the namespace open (then `netns del` only unmounts its name).
            errors.append(_run_quiet(["ip", "link", "del", link.host_if]))
            errors.append(_run_quiet(["ip", "netns", "del", link.netns]))
        errors.append(_run_quiet(["ip", "link", "del", self.bridge]))
        self.links.clear()
        failures = [error for error in errors if error is not None and not _is_gone(error)]
        for failure in failures:
            log.warning("testbed link teardown: %s", failure)
        if failures and raise_errors:
            raise failures[0]

    # -- devices -------------------------------------------------------------------------------

    def add_device(
        self,
        name: str,
        uplink: RateSchedule,
        downlink: RateSchedule | None = None,
        delay_ms: float = 0,
        loss_pct: float = 0,
    ) -> EmulatedLink:
        """Create the device's namespace and shaped veth; ``downlink`` None: as the uplink.

        ``delay_ms`` is one-way, added in each direction; ``loss_pct`` applies to each direction.
        """
        self._check_device(name, delay_ms, loss_pct)
        index = len(self.links)
        try:
            device_ip = str(next(self._free_ips))
        except StopIteration:
            raise LinkLabError(f"subnet {self.network} has no address left for {name!r}") from None
        link = EmulatedLink(
            name=name,
            netns=f"{self.prefix}-{name}",
            device_ip=device_ip,
            host_ip=self.host_ip,
            host_if=f"{self.prefix}h{index}",
            device_if=f"{self.prefix}d{index}",
            uplink=uplink,
            downlink=downlink if downlink is not None else uplink,
            delay_ms=delay_ms,
            loss_pct=loss_pct,
        )
        # Registered before creation, so close() removes a half-built device too.
        self.links[name] = link
        self._create(link)
        return link

    def _check_device(self, name: str, delay_ms: float, loss_pct: float) -> None:
        if not self._open or self.support is None:
            raise LinkLabError("LinkLab is not open: use it as a context manager")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise LinkLabError(f"invalid device name {name!r}")
        if name in self.links:
            raise LinkLabError(f"device {name!r} already exists")
        if len(self.links) >= 1000:  # interface names: 15 chars, 3 digits for the index
            raise LinkLabError("at most 1000 devices per LinkLab")
        if delay_ms < 0 or not 0 <= loss_pct <= 100:
            raise LinkLabError(f"need delay_ms >= 0 and 0 <= loss_pct <= 100 for {name!r}")
        if (delay_ms > 0 or loss_pct > 0) and not self.support.netem:
            raise NetemUnavailableError(
                f"device {name!r} asks for delay_ms={delay_ms:g} loss_pct={loss_pct:g}, but this "
                "kernel has no netem qdisc (tc: 'Specified qdisc kind is unknown'); only rate "
                "shaping works here. Remove delay/loss or use a kernel with sch_netem."
            )

    def _create(self, link: EmulatedLink) -> None:
        ns = ["ip", "-n", link.netns]
        _run(["ip", "netns", "add", link.netns])
        _run(["ip", "link", "add", link.host_if, "type", "veth", "peer", "name", link.device_if])
        _run(["ip", "link", "set", link.host_if, "master", self.bridge])
        _run(["ip", "link", "set", link.host_if, "up"])
        _run(["ip", "link", "set", link.device_if, "netns", link.netns])
        _run(
            [
                *ns,
                "addr",
                "add",
                f"{link.device_ip}/{self.network.prefixlen}",
                "dev",
                link.device_if,
            ]
        )
        _run([*ns, "link", "set", "lo", "up"])
        _run([*ns, "link", "set", link.device_if, "up"])
        _run([*ns, "route", "add", "default", "via", self.host_ip])
        link.shape()

    # -- schedules -----------------------------------------------------------------------------

    async def run_schedules(self, time_scale: float = 1.0) -> None:
        """Apply every link's schedule changes at their times, counted from this call.

        Times are divided and rates multiplied by ``time_scale``; the rates at t=0 are applied
        at once (add_device shaped with the unscaled ones). Returns after the last change;
        cancel it to stop sooner.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        events = sorted(
            (
                (t_s, up, down, link)
                for link in self.links.values()
                for t_s, up, down in link.events(time_scale)
            ),
            key=lambda event: event[0],
        )
        for t_s, up, down, link in events:
            delay = start + t_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await asyncio.to_thread(link.set_rate, up, down)


def _is_gone(error: LinkLabError) -> bool:
    """Teardown of something already gone (e.g. its peer took it along) is not a failure."""
    text = str(error)
    return "Cannot find device" in text or "No such file or directory" in text


def _close_open_labs() -> None:
    for lab in list(_OPEN_LABS):
        lab.close(raise_errors=False)


atexit.register(_close_open_labs)
