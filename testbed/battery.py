"""An emulated battery, drained by the energy the device's cost model accounts.

It reports through the same :class:`device_agent.ports.BatteryReading` as a real battery, so the
agent treats emulated and real batteries alike.
"""

from __future__ import annotations

import math

from device_agent.ports import BatteryReading

__all__ = ["EmulatedBattery"]

JOULES_PER_WH = 3600.0


class EmulatedBattery:
    """A battery of ``capacity_wh`` starting at ``percent``; depleted at or below ``floor_percent``.

    ``floor_percent`` is where the emulated device gives up (a board shuts down before its cells
    are empty); draining continues below it down to 0 %, so the percentage stays meaningful.
    Never charges.
    """

    __slots__ = ("_capacity_j", "_drained_j", "_floor_percent", "_last_power_w", "_remaining_j")

    def __init__(
        self, capacity_wh: float, percent: float = 100.0, floor_percent: float = 0.0
    ) -> None:
        capacity_wh = _finite("capacity_wh", capacity_wh)
        if capacity_wh <= 0:
            raise ValueError(f"capacity_wh must be positive, got {capacity_wh!r}")
        percent = _finite("percent", percent)
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be in [0, 100], got {percent!r}")
        floor_percent = _finite("floor_percent", floor_percent)
        if not 0 <= floor_percent < 100:
            raise ValueError(f"floor_percent must be in [0, 100), got {floor_percent!r}")
        self._capacity_j = capacity_wh * JOULES_PER_WH
        self._remaining_j = self._capacity_j * percent / 100.0
        self._floor_percent = floor_percent
        self._drained_j = 0.0
        self._last_power_w: float | None = None

    @property
    def capacity_wh(self) -> float:
        return self._capacity_j / JOULES_PER_WH

    @property
    def remaining_wh(self) -> float:
        return self._remaining_j / JOULES_PER_WH

    @property
    def drained_j(self) -> float:
        """Energy drained so far, counting what was asked for after the battery ran empty."""
        return self._drained_j

    @property
    def floor_percent(self) -> float:
        return self._floor_percent

    @property
    def percent(self) -> float:
        """Charge left, ``[0, 100]``."""
        return 100.0 * self._remaining_j / self._capacity_j

    @property
    def charging(self) -> bool:
        return False

    @property
    def depleted(self) -> bool:
        return self.percent <= self._floor_percent

    def drain(self, joules: float, over_s: float | None = None) -> float:
        """Take ``joules`` out (clamped at empty) and return the percentage left.

        ``over_s``: how long that energy took; when given, readings report the mean power.
        """
        joules = _finite("joules", joules)
        if joules < 0:
            raise ValueError(f"joules must not be negative, got {joules!r}")
        if over_s is not None:
            over_s = _finite("over_s", over_s)
            if over_s <= 0:
                raise ValueError(f"over_s must be positive, got {over_s!r}")
            self._last_power_w = joules / over_s
        self._drained_j += joules
        self._remaining_j = max(self._remaining_j - joules, 0.0)
        return self.percent

    def reading(self) -> BatteryReading:
        """What a real battery's sensor would report now."""
        return BatteryReading(percent=self.percent, charging=False, power_w=self._last_power_w)

    def __repr__(self) -> str:
        return (
            f"EmulatedBattery(capacity_wh={self.capacity_wh!r}, percent={self.percent:.3f}, "
            f"floor_percent={self._floor_percent!r})"
        )


def _finite(name: str, value: float) -> float:
    # bool is an int; True as a capacity is a mistake, not 1 Wh.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)
