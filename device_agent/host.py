"""The host as it is, behind the agent's ports: real sensors, its own pace, an unshaped link."""

from __future__ import annotations

from pathlib import Path

from device_agent.ports import BatteryReading, Environment, Pace, PowerReading
from device_agent.sensors import read_battery, read_board_power
from schemas import ModelInfo, PowerFigures
from transport.shaping import LinkShaper

__all__ = ["HostBoard", "SysfsBattery", "SysfsPowerMeter", "UnshapedLink", "host_environment"]


class HostBoard:
    """Compute takes what it takes here; the board declares nothing (the settings may)."""

    emulates_compute = False
    memory_bytes = None

    def power(self) -> PowerFigures | None:
        return None

    def prepare(self, model: ModelInfo) -> None:
        """Nothing to prepare: the host's times are its own."""

    def block_times(
        self, forward_s: tuple[float, ...], backward_s: tuple[float, ...], batch: int, model: str
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return forward_s, backward_s

    async def pad(self, pace: Pace, started: float) -> float:
        return 0.0


class SysfsBattery:
    """The system battery, read from sysfs under ``root``; it drains by itself."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root

    def reading(self) -> BatteryReading | None:
        return read_battery(self.root)

    def account(self, busy_s: float, uplink_s: float, downlink_s: float) -> None:
        """The hardware keeps its own account."""


class SysfsPowerMeter:
    """A Jetson's INA3221 monitor(s), read from sysfs under ``root``."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root

    def reading(self) -> PowerReading | None:
        return read_board_power(self.root)


class UnshapedLink:
    """The link as the network makes it (tc may shape it outside the agent)."""

    shaper: LinkShaper | None = None

    async def follow(self) -> None:
        return


def host_environment(sysfs_root: Path = Path("/")) -> Environment:
    """This host as it is; ``sysfs_root``: where ``/sys`` is (tests point it at a fake tree)."""
    return Environment(
        board=HostBoard(),
        battery=SysfsBattery(sysfs_root),
        power_meter=SysfsPowerMeter(sysfs_root),
        link=UnshapedLink(),
    )
