"""The emulated battery: drained by accounted energy, read like a real one."""

from __future__ import annotations

import math

import pytest

from device_agent.ports import BatteryReading
from testbed.battery import EmulatedBattery


def test_starts_full_by_default() -> None:
    battery = EmulatedBattery(10.0)
    assert battery.percent == 100.0
    assert battery.capacity_wh == 10.0
    assert battery.remaining_wh == 10.0
    assert battery.charging is False
    assert not battery.depleted


def test_drain_in_joules() -> None:
    battery = EmulatedBattery(1.0, percent=50.0)  # 1800 J left of 3600
    assert battery.drain(360.0) == pytest.approx(40.0)
    assert battery.percent == pytest.approx(40.0)
    assert battery.remaining_wh == pytest.approx(0.4)
    assert battery.drained_j == pytest.approx(360.0)


def test_clamped_at_zero_and_depleted() -> None:
    battery = EmulatedBattery(1.0, percent=1.0)
    battery.drain(1000.0)
    assert battery.percent == 0.0
    assert battery.depleted
    assert battery.drained_j == 1000.0
    battery.drain(5.0)
    assert battery.percent == 0.0


def test_floor_marks_depletion_before_empty() -> None:
    battery = EmulatedBattery(1.0, floor_percent=20.0)
    battery.drain(0.79 * 3600)
    assert not battery.depleted
    battery.drain(0.01 * 3600)
    assert battery.depleted
    assert battery.percent == pytest.approx(20.0)
    battery.drain(0.1 * 3600)  # keeps draining below the floor
    assert battery.percent == pytest.approx(10.0)


def test_exactly_empty_is_depleted_with_no_floor() -> None:
    battery = EmulatedBattery(2.0)
    battery.drain(7200.0)
    assert battery.depleted
    assert battery.percent == 0.0


def test_reading_is_the_real_sensors_type() -> None:
    battery = EmulatedBattery(5.0, percent=80.0)
    assert battery.reading() == BatteryReading(percent=80.0, charging=False, power_w=None)
    battery.drain(30.0, over_s=10.0)
    reading = battery.reading()
    assert isinstance(reading, BatteryReading)
    assert reading.power_w == pytest.approx(3.0)
    assert reading.charging is False
    assert reading.percent == pytest.approx(80.0 - 100 * 30 / 18000)


def test_zero_drain_is_fine() -> None:
    battery = EmulatedBattery(1.0)
    assert battery.drain(0.0) == 100.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"capacity_wh": 0.0}, "capacity_wh"),
        ({"capacity_wh": -1.0}, "capacity_wh"),
        ({"capacity_wh": math.inf}, "capacity_wh"),
        ({"capacity_wh": math.nan}, "capacity_wh"),
        ({"capacity_wh": 1.0, "percent": 101.0}, "percent"),
        ({"capacity_wh": 1.0, "percent": -0.1}, "percent"),
        ({"capacity_wh": 1.0, "floor_percent": 100.0}, "floor_percent"),
        ({"capacity_wh": 1.0, "floor_percent": -1.0}, "floor_percent"),
    ],
)
def test_construction_errors_name_the_argument(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        EmulatedBattery(**kwargs)


def test_type_errors_name_the_argument() -> None:
    with pytest.raises(TypeError, match="capacity_wh"):
        EmulatedBattery(True)
    with pytest.raises(TypeError, match="percent"):
        EmulatedBattery(1.0, percent="50")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("joules", "over_s", "name"),
    [
        (-1.0, None, "joules"),
        (math.nan, None, "joules"),
        (1.0, 0.0, "over_s"),
        (1.0, -2.0, "over_s"),
        (1.0, math.inf, "over_s"),
    ],
)
def test_drain_errors_name_the_argument(joules: float, over_s: float | None, name: str) -> None:
    battery = EmulatedBattery(1.0)
    with pytest.raises(ValueError, match=name):
        battery.drain(joules, over_s=over_s)
    assert battery.percent == 100.0  # a rejected drain changes nothing


def test_repr_mentions_state() -> None:
    assert "capacity_wh=1.0" in repr(EmulatedBattery(1.0, percent=50.0))
