"""What the agent asks of the machine it runs on, as small interfaces (ports).

The agent paces its compute, reads a battery and a power meter, and may have its link shaped;
it asks these of an :class:`Environment`. ``device_agent.host`` implements them for the host as
it is (real sensors, no pacing, an unshaped link); the testbed's emulation implements them for
an emulated board, battery and link schedule, and the CLI passes the one the settings ask for.
Plain types and protocols only: no torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

if TYPE_CHECKING:
    from schemas import ModelInfo, PowerFigures
    from transport.shaping import LinkShaper

__all__ = [
    "Battery",
    "BatteryReading",
    "Board",
    "Environment",
    "HostTimings",
    "LinkShaping",
    "Pace",
    "Phase",
    "PowerMeter",
    "PowerReading",
]

Phase = Literal["forward", "backward"]


class HostTimings(NamedTuple):
    """Forward and backward seconds of every block, per batch, as this host measured them."""

    forward_s: tuple[float, ...]
    backward_s: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Pace:
    """What a compute phase covers, so an emulated board can pad it to its own time."""

    phases: tuple[Phase, ...]
    blocks: int  # blocks [0, blocks) of the model
    batch: int
    model: str


@dataclass(frozen=True, slots=True)
class BatteryReading:
    """Charge left in percent ``[0, 100]``; charging and power flowing in watts (None: unknown)."""

    percent: float
    charging: bool | None
    power_w: float | None


@dataclass(frozen=True, slots=True)
class PowerReading:
    """Board power in watts and the power of each measured rail by name."""

    total_w: float
    rails: dict[str, float]


class Board(Protocol):
    """The board the agent runs as: how long its compute takes and what it declares."""

    @property
    def emulates_compute(self) -> bool:
        """Whether compute phases are padded to another board's time."""
        ...

    @property
    def memory_bytes(self) -> int | None:
        """Memory available for training (None: not declared)."""
        ...

    def power(self) -> PowerFigures | None:
        """The board's power figures (None: not declared)."""
        ...

    def prepare(self, model: ModelInfo) -> None:
        """Get ready to pace ``model`` and give its :meth:`block_times` (an emulated board counts
        what the model's blocks compute; may take a fraction of a second: call it off the event
        loop). Called before the model's first profile or round; again is cheap."""
        ...

    def block_times(
        self, forward_s: tuple[float, ...], backward_s: tuple[float, ...], batch: int, model: str
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The board's per-block times, given the host's measured ones."""
        ...

    async def pad(self, pace: Pace, started: float) -> float:
        """Called when the host has finished ``pace``'s work, begun at ``started``
        (``time.perf_counter()``): wait out the rest of the board's time for it. Returns the
        seconds the host fell behind that time."""
        ...


class Battery(Protocol):
    """The battery the agent reports (its telemetry) and drains (an emulated one)."""

    def reading(self) -> BatteryReading | None:
        """Now; None when there is no battery."""
        ...

    def account(self, busy_s: float, uplink_s: float, downlink_s: float) -> None:
        """A round kept the board computing, sending and receiving this long."""
        ...


class PowerMeter(Protocol):
    """The board's power monitor."""

    def reading(self) -> PowerReading | None:
        """Now; None when there is no monitor."""
        ...


class LinkShaping(Protocol):
    """What the agent's own link does to emulate another one."""

    @property
    def shaper(self) -> LinkShaper | None:
        """Token buckets for the agent's MQTT link (None: the link is not shaped by the agent)."""
        ...

    async def follow(self) -> None:
        """Change the shaped rates over time, as a schedule says; returns when there is none."""
        ...


@dataclass(frozen=True, slots=True)
class Environment:
    """Everything the agent asks of its surroundings."""

    board: Board
    battery: Battery
    power_meter: PowerMeter
    link: LinkShaping
