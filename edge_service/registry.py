"""The devices the edge knows: what each said at registration, its latest readings, and the one
rule for which link rates to believe.

Every consumer of a device's link rates (the planner, the report's weight-transfer estimate,
the metrics) asks :meth:`DeviceRegistry.link`, so they cannot disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace

from edge_service.planning import DeviceReadings
from edge_service.rejections import Rejected
from schemas import ComputeProfile, Hello, ProtocolVersion, Telemetry

log = logging.getLogger(__name__)

# measured: the device's own recent estimate; measured (stale): its last one, older than the
# staleness bound; declared: what its hello said; assumed: the edge's configured default.
LinkSource = str


@dataclass(frozen=True)
class LinkEstimate:
    uplink_bps: float
    downlink_bps: float
    source: LinkSource

    @property
    def known(self) -> bool:
        return self.source != "assumed"


@dataclass
class DeviceRecord:
    hello: Hello
    state: str  # online, idle, training, offline or refused
    last_seen: float
    telemetry: Telemetry | None = None
    telemetry_at: float = 0.0  # time.monotonic() of the last telemetry
    compute: ComputeProfile | None = None  # the latest block timings the device measured
    # Its latest timings that follow a whole-model round (or its profile): what the planner
    # prices its blocks with. A split round's timings carry what a split batch costs beyond its
    # blocks into every block (one factor for the whole profile): a factor of 6 measured at cut
    # 1 of the demo priced federated learning 6 times too slow. The edge learns that extra cost
    # on its own (edge_service.overhead: split_compute_s).
    plain_compute: ComputeProfile | None = None
    # The rounds it was started at a cut below the last (the latest few), and the latest round.
    split_rounds: set[int] = field(default_factory=set)
    started_round: int = 0
    # The last good link estimate: a later telemetry without one does not erase it.
    measured_link: tuple[float, float | None] | None = None
    reported_round: int = 0  # the last round whose end-of-round telemetry arrived

    @property
    def online(self) -> bool:
        """Connected and taking part (a refused device is connected but has another model)."""
        return self.state not in ("offline", "refused")

    @property
    def protocol(self) -> ProtocolVersion:
        """The protocol version the device speaks: it is answered in it."""
        return self.hello.v

    def take_telemetry(self, telemetry: Telemetry) -> None:
        self.telemetry, self.telemetry_at = telemetry, time.monotonic()
        if telemetry.compute is not None:
            self.compute = telemetry.compute
            if self._plain_timings(telemetry.round):
                self.plain_compute = telemetry.compute
        if telemetry.uplink_bps is not None:
            self.measured_link = (telemetry.uplink_bps, telemetry.downlink_bps)
        if telemetry.round is not None:
            self.reported_round = max(self.reported_round, telemetry.round)

    def started(self, round_no: int, split: bool) -> None:
        """It was sent round ``round_no``'s start, at a split cut or not."""
        self.started_round = max(self.started_round, round_no)
        if split:
            self.split_rounds.add(round_no)
        self.split_rounds = {r for r in self.split_rounds if r >= self.started_round - 3}

    def _plain_timings(self, round_no: int | None) -> bool:
        """Whether timings sent after round ``round_no`` (None: a periodic telemetry, whose
        timings follow the round in flight or the one before) come from a whole-model round."""
        if round_no is not None:
            return round_no not in self.split_rounds
        return not {self.started_round, self.started_round - 1} & self.split_rounds


class DeviceRegistry(Mapping[str, DeviceRecord]):
    """Device id -> record; ``changed`` is set whenever a device arrives, leaves or reports its
    compute profile (what the start-up waits on)."""

    def __init__(self, *, assumed_link_bps: float, stale_after_s: float) -> None:
        self.assumed_link_bps = assumed_link_bps
        self.stale_after_s = stale_after_s
        self._records: dict[str, DeviceRecord] = {}
        self.changed = asyncio.Event()

    def __getitem__(self, device_id: str) -> DeviceRecord:
        return self._records[device_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    # --- changes --------------------------------------------------------------------------------

    def register(self, device_id: str, hello: Hello) -> bool:
        """Record a hello; True if it comes from a new process of a known device (a restart)."""
        known = self._records.get(device_id)
        restarted = known is not None and known.hello.instance != hello.instance
        if known is not None and not restarted:
            # The same process registering again (after an abort): its readings still hold.
            record = replace(known, hello=hello, state="online", last_seen=time.time())
        else:
            record = DeviceRecord(hello=hello, state="online", last_seen=time.time())
        self._records[device_id] = record
        self.changed.set()
        return restarted

    def registered(self, device_id: str) -> DeviceRecord:
        """The record of a device that said hello (it is alive: now seen); else ``Rejected``."""
        record = self._records.get(device_id)
        if record is None:
            raise Rejected("unknown_device", "send hello first")
        record.last_seen = time.time()
        return record

    def take_telemetry(self, device_id: str, telemetry: Telemetry) -> None:
        self.registered(device_id).take_telemetry(telemetry)
        if telemetry.compute is not None or telemetry.round is not None:
            self.changed.set()

    def mark_offline(self, device_id: str) -> bool:
        """True if the device was online until now."""
        record = self._records.get(device_id)
        if record is None or not record.online:
            return False
        record.state = "offline"
        self.changed.set()
        return True

    def refuse(self, device_id: str) -> None:
        """The device refused the session (it has another model): left out of every plan."""
        record = self._records.get(device_id)
        if record is not None and record.state != "refused":
            record.state = "refused"
            self.changed.set()

    # --- reading --------------------------------------------------------------------------------

    def online(self) -> dict[str, DeviceRecord]:
        return {d: r for d, r in self._records.items() if r.online}

    def link(self, device_id: str) -> LinkEstimate:
        """The link rates to believe for a device: its newest measurement (stale when old),
        else what it declared, else the edge's assumption; a missing downlink is the uplink."""
        record = self._records.get(device_id)
        if record is not None and record.measured_link is not None:
            up, down = record.measured_link
            fresh = time.monotonic() - record.telemetry_at <= self.stale_after_s
            return LinkEstimate(up, down or up, "measured" if fresh else "measured (stale)")
        if record is not None and record.hello.uplink_bps is not None:
            up = record.hello.uplink_bps
            return LinkEstimate(up, record.hello.downlink_bps or up, "declared")
        return LinkEstimate(self.assumed_link_bps, self.assumed_link_bps, "assumed")

    def readings(self, device_id: str, wire_itemsize: float, samples: int) -> DeviceReadings:
        """What the planner needs of one device this round."""
        record = self._records[device_id]
        live, link = record.telemetry, self.link(device_id)
        return DeviceReadings(
            samples=samples,
            compute=record.plain_compute or record.compute,
            power=record.hello.power,
            memory_bytes=record.hello.memory_bytes,
            battery_pct=live.battery_pct if live else None,
            uplink_bps=link.uplink_bps if link.known else None,
            downlink_bps=link.downlink_bps if link.known else None,
            link_source=link.source,
            wire_itemsize=wire_itemsize,
            allowed_cuts=record.hello.allowed_cuts,
        )

    # --- waiting --------------------------------------------------------------------------------

    async def wait_for_devices(self, minimum: int, timeout_s: float) -> None:
        """Until ``minimum`` devices are online; TimeoutError after ``timeout_s``."""
        if not await self._wait_until(lambda: len(self.online()) >= minimum, timeout_s):
            raise TimeoutError(
                f"only {len(self.online())} of {minimum} devices registered within "
                f"{timeout_s:.0f} s"
            )

    async def wait_for_profiles(self, timeout_s: float) -> None:
        """Give online devices time to measure their block timings before the first plan."""

        def missing() -> list[str]:
            return [d for d, r in self.online().items() if r.compute is None]

        if not await self._wait_until(lambda: not missing(), timeout_s):
            log.warning("no compute profile from %s: planning with the edge's own speed",
                        ", ".join(missing()))  # fmt: skip

    async def wait_for_round_telemetry(
        self, device_ids: Collection[str], round_no: int, timeout_s: float
    ) -> list[str]:
        """Until each online one of ``device_ids`` sent its telemetry of ``round_no`` (its
        compute drift, its link estimates), at most ``timeout_s``; those still missing."""

        def missing() -> list[str]:
            online = self.online()
            return [d for d in device_ids if d in online and online[d].reported_round < round_no]

        await self._wait_until(lambda: not missing(), timeout_s)
        return missing()

    async def _wait_until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.changed.wait()
        return True
