"""Running the agent as an emulated device of the testbed (a Raspberry Pi, a Jetson, ...).

:class:`Emulation` implements the agent's ports (``device_agent.ports``) for the device its
settings describe. The real computation always runs; each compute phase is then padded to the
time the emulated device would take (testbed.profiles: the paper's figures for its VGG5, and for
any other model what its blocks compute and move at the board's fitted rates, the same on every
host), an emulated battery is drained by the
energy the cost model accounts, and, where links are not shaped by tc, a token bucket shapes the
agent's own traffic along the link's bandwidth schedule. If the host is slower than the emulated
device the agent says so (``behind_s``) instead of reporting times it did not achieve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

from device_agent.host import host_environment
from device_agent.ports import BatteryReading, Environment, Pace
from device_agent.settings import DeviceSettings
from planner.compute import BlockCosts
from planner.energy import device_energy_j
from schemas import ModelInfo, PowerFigures
from splitnn.models import ModelSpec
from testbed.battery import EmulatedBattery
from testbed.block_costs import block_costs
from testbed.profiles import ComputePacer, Phase, get_profile, pad
from testbed.schedule import RateSchedule, parse_schedule
from transport.shaping import LinkShaper

log = logging.getLogger(__name__)


class Emulation:
    """The board, battery and link that ``settings`` ask for: the agent's ``Board``,
    ``Battery`` (with ``battery_wh``) and ``LinkShaping`` ports (see :meth:`environment`)."""

    def __init__(self, settings: DeviceSettings) -> None:
        self.settings = settings
        self.profile = get_profile(settings.profile)
        self.time_scale = settings.time_scale
        self._pacer = ComputePacer(self.profile, time_scale=settings.time_scale)
        self._costs: dict[str, BlockCosts] = {}  # by model name, as paces and profiles name it
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

    def environment(self) -> Environment:
        """The agent's ports: this emulation's board and link, its battery if it has one, and
        otherwise the host's own sensors."""
        host = host_environment(self.settings.sysfs_root)
        battery = self if self.battery is not None else host.battery
        return dataclasses.replace(host, board=self, battery=battery, link=self)

    # --- the board ------------------------------------------------------------------------------

    @property
    def emulates_compute(self) -> bool:
        return self.profile.emulated

    @property
    def memory_bytes(self) -> int | None:
        return self.profile.memory_bytes

    def power(self) -> PowerFigures | None:
        return self.profile.power

    def prepare(self, model: ModelInfo) -> None:
        """Count what ``model``'s blocks compute and move, to pace it (torch: a fraction of a
        second, once per architecture and input shape)."""
        if self.emulates_compute:
            self._costs[model.name] = block_costs(ModelSpec.of(model))

    def _target_s(self, pace: Pace) -> float | None:
        """Emulated time of ``pace``'s phases over its blocks (None: not emulating)."""
        if not self.emulates_compute:
            return None
        costs = self._costs.get(pace.model)
        total = 0.0
        for phase in pace.phases:
            target = self._pacer.target_s(
                phase, 0, pace.blocks, pace.batch, pace.model, costs=costs
            )
            total += target or 0.0
        return total

    def block_times(
        self, forward_s: tuple[float, ...], backward_s: tuple[float, ...], batch: int, model: str
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The emulated device's per-block times (the host's measured ones when not emulating).

        What an emulated device reports as its compute profile: the planner must see the board
        it emulates, not this host, so the host's times play no part (after :meth:`prepare`).
        """
        if not self.emulates_compute:
            return forward_s, backward_s
        costs = self._costs.get(model)

        def emulated(phase: Phase) -> tuple[float, ...]:
            return self._pacer.block_times(phase, batch, model, costs) or ()

        return emulated("forward"), emulated("backward")

    async def pad(self, pace: Pace, started: float) -> float:
        """Sleep out the rest of ``pace``'s emulated time since ``started``; returns seconds
        behind."""
        host_s = time.perf_counter() - started
        result = pad(host_s, self._target_s(pace))
        if result.sleep_s > 0:
            await asyncio.sleep(result.sleep_s)
        return result.behind_s

    # --- the battery ----------------------------------------------------------------------------

    def reading(self) -> BatteryReading | None:
        return self.battery.reading() if self.battery is not None else None

    def account(self, busy_s: float, uplink_s: float, downlink_s: float) -> None:
        """Drain the emulated battery by the round's energy under the profile's power."""
        power = self.power()
        if self.battery is None or power is None:
            return
        joules = device_energy_j(power, busy_s, uplink_s, downlink_s)
        elapsed = busy_s + uplink_s + downlink_s
        self.battery.drain(joules, over_s=elapsed if elapsed > 0 else None)

    # --- the link -------------------------------------------------------------------------------

    async def follow(self) -> None:
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
