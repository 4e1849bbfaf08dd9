"""Running the agent as an emulated device of the testbed (a Raspberry Pi, a Jetson, ...).

The real computation always runs; each compute phase is then padded to the time the emulated
device would take (testbed.profiles), an emulated battery is drained by the energy the cost
model accounts, and, where links are not shaped by tc, a token bucket shapes the agent's own
traffic along the link's bandwidth schedule. If the host is slower than the emulated device the
agent says so (``behind_s``) instead of reporting times it did not achieve.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from device_agent.settings import DeviceSettings
from planner.energy import device_energy_j
from schemas import PowerFigures
from splitnn.models import ModelSpec
from splitnn.profiling import profile_blocks
from testbed.battery import EmulatedBattery
from testbed.profiles import ComputePacer, Phase, get_profile, pad
from testbed.schedule import RateSchedule, parse_schedule
from transport.shaping import LinkShaper

# A model's per-block (forward, backward) seconds per batch on this host.
HostProfiler = Callable[[ModelSpec, int], tuple[tuple[float, ...], tuple[float, ...]]]


def _profile(spec: ModelSpec, batch: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    measured = profile_blocks(spec, batch)
    return measured.forward_s, measured.backward_s


log = logging.getLogger(__name__)


class Emulation:
    def __init__(self, settings: DeviceSettings) -> None:
        self.settings = settings
        self.profile = get_profile(settings.profile)
        self.time_scale = settings.time_scale
        self._pacer = ComputePacer(self.profile, time_scale=settings.time_scale)
        self.battery = (
            EmulatedBattery(settings.battery_wh, settings.battery_pct)
            if settings.battery_wh
            else None
        )
        self.schedules: tuple[RateSchedule, RateSchedule] | None = None
        self.shaper: LinkShaper | None = None
        if settings.link_mode == "token-bucket":
            uplink = _schedule(settings.uplink_schedule, "uplink_schedule")
            downlink = (
                _schedule(settings.downlink_schedule, "downlink_schedule")
                if settings.downlink_schedule
                else uplink
            )
            self.schedules = (uplink.scaled(self.time_scale), downlink.scaled(self.time_scale))
            self.shaper = LinkShaper.at(
                self.schedules[0].rate_at(0.0) * 1e6, self.schedules[1].rate_at(0.0) * 1e6
            )

    @property
    def emulates_compute(self) -> bool:
        return self.profile.emulated

    def power(self) -> PowerFigures | None:
        return self.profile.power

    def prepare(self, model: str, measure: HostProfiler = _profile) -> None:
        """Measure the host on the profile's reference model, once, if ``model`` needs it.

        Runs in the compute thread: a profile of the reference model takes about a second
        (``measure`` may take it from the agent's profile cache instead).
        """
        if not self.emulates_compute or self._pacer.can_pace(model):
            return
        reference = ModelSpec(self.profile.reference_model, 3, 32, 10)
        self._pacer = ComputePacer(
            self.profile,
            time_scale=self.time_scale,
            host_reference=measure(reference, self.profile.reference_batch),
        )

    def target_s(
        self, phases: tuple[Phase, ...], blocks: int, batch: int, model: str, host_s: float
    ) -> float | None:
        """Emulated time of ``phases`` over the first ``blocks`` blocks (None: not emulating)."""
        if not self.emulates_compute:
            return None
        total = 0.0
        for phase in phases:
            # Another model's phases are paced in proportion to the host's whole measured time.
            share = host_s / len(phases)
            target = self._pacer.target_s(phase, 0, blocks, batch, model, host_s=share)
            total += target or 0.0
        return total

    def block_times(
        self, forward_s: tuple[float, ...], backward_s: tuple[float, ...], batch: int, model: str
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The emulated device's per-block times, given the host's measured ones.

        What an emulated device reports as its compute profile: the planner must see the board
        it emulates, not this host.
        """
        if not self.emulates_compute:
            return forward_s, backward_s

        def emulated(phase: Phase, host: tuple[float, ...]) -> tuple[float, ...]:
            return tuple(
                self._pacer.target_s(phase, i, i + 1, batch, model, host_s=t) or 0.0
                for i, t in enumerate(host)
            )

        return emulated("forward", forward_s), emulated("backward", backward_s)

    async def pace(self, started: float, target_s: float | None) -> float:
        """Sleep out the rest of ``target_s`` since ``started``; returns seconds behind."""
        result = pad(time.perf_counter() - started, target_s)
        if result.sleep_s > 0:
            await asyncio.sleep(result.sleep_s)
        return result.behind_s

    def account(self, busy_s: float, uplink_s: float, downlink_s: float) -> None:
        """Drain the emulated battery by the round's energy under the profile's power."""
        power = self.power()
        if self.battery is None or power is None:
            return
        joules = device_energy_j(power, busy_s, uplink_s, downlink_s)
        elapsed = busy_s + uplink_s + downlink_s
        self.battery.drain(joules, over_s=elapsed if elapsed > 0 else None)

    async def follow_schedules(self) -> None:
        """Token-bucket mode: change the emulated link rates when the schedules say."""
        if self.schedules is None or self.shaper is None:
            return
        uplink, downlink = self.schedules
        changes = sorted({t for t, _ in uplink.changes()} | {t for t, _ in downlink.changes()})
        began = time.monotonic()
        for at in changes:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - began)))
            self.shaper.set_rates(uplink.rate_at(at) * 1e6, downlink.rate_at(at) * 1e6)
            log.info("%s: emulated link now %.1f/%.1f Mbit/s", self.settings.device_id,
                     uplink.rate_at(at), downlink.rate_at(at))  # fmt: skip


def _schedule(spec: str | None, name: str) -> RateSchedule:
    if spec is None:
        raise ValueError(f"{name} is required when link_mode is token-bucket")
    try:
        value = json.loads(spec)
    except json.JSONDecodeError:
        value = spec  # a trace file path
    if isinstance(value, str):
        value = {"trace": value}
    return parse_schedule(value)
