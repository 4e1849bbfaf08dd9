"""Readers of the device's real battery and board power, from Linux's sysfs.

Every reader takes ``root`` (where ``/`` is; tests point it at a fake tree) and returns None when
the hardware is absent or says nothing usable. Readers never raise on odd content: sysfs files can
vanish between listing and reading, hold garbage, or fail with EIO/ENODATA, and telemetry must not
take the agent down for that. What was skipped is logged at debug.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from device_agent.ports import BatteryReading, PowerReading

__all__ = ["read_battery", "read_board_power"]

log = logging.getLogger(__name__)

POWER_SUPPLY_DIR = "sys/class/power_supply"
INA3221_IIO_DIR = "sys/bus/i2c/drivers/ina3221x"  # L4T 32 and older (Nano, TX1, TX2)
INA3221_HWMON_DIR = "sys/bus/i2c/drivers/ina3221"  # L4T 34 and newer (upstream hwmon driver)

# Literal reading of the status: "Full" and "Not charging" mean external power is present but no
# charge is going in, so they are not "charging". Anything else (Unknown, vendor strings) is None.
_CHARGING_BY_STATUS = MappingProxyType(
    {"charging": True, "discharging": False, "not charging": False, "full": False}
)

# The board's input rail (VDD_IN on TX2/Xavier/Orin, POM_5V_IN on the Nano) already includes
# every other rail the monitor measures, so when present it alone is the board's power.
_INPUT_RAIL = re.compile(r"(?:^|_)IN$")
# Labels the device tree gives channels with nothing connected.
_UNCONNECTED_LABELS = frozenset({"NC", "N/C", "UNUSED"})


# --- battery ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Battery:
    percent: float
    charging: bool | None
    power_w: float | None
    full_wh: float | None  # weight when combining several batteries


def read_battery(root: Path = Path("/")) -> BatteryReading | None:
    """The system battery from ``/sys/class/power_supply``; None on mains-only machines.

    Percentage: ``capacity`` if present, else ``energy_now/energy_full``, else
    ``charge_now/charge_full``. Power: ``power_now`` (µW), else ``current_now * voltage_now``
    (µA·µV). Supplies with ``scope`` "Device" (a wireless mouse's battery) or ``present`` 0 are
    skipped. Several batteries (dual-battery laptops) combine weighted by their full energy, so the
    result is the fraction of all stored energy left; without energy figures for every battery the
    percentages are averaged. Charging if any battery charges; power is the sum of those reporting.
    """
    batteries = [
        battery
        for supply in _children(Path(root) / POWER_SUPPLY_DIR)
        if (battery := _read_one_battery(supply)) is not None
    ]
    if not batteries:
        return None
    weights = [b.full_wh for b in batteries]
    if all(w is not None and w > 0 for w in weights):
        total = sum(w for w in weights if w is not None)
        percent = sum(b.percent * (b.full_wh or 0.0) for b in batteries) / total
    else:
        percent = sum(b.percent for b in batteries) / len(batteries)
    states = [b.charging for b in batteries]
    charging = True if True in states else False if False in states else None
    powers = [b.power_w for b in batteries if b.power_w is not None]
    return BatteryReading(
        percent=_clamp_percent(percent),
        charging=charging,
        power_w=sum(powers) if powers else None,
    )


def _read_one_battery(supply: Path) -> _Battery | None:
    kind = _read_text(supply / "type")
    if kind is None or kind.lower() != "battery":
        return None  # Mains, USB, UPS, Wireless...: not a battery
    scope = _read_text(supply / "scope")
    if scope is not None and scope.lower() == "device":
        return None  # powers a peripheral, not this machine
    if _read_text(supply / "present") == "0":
        return None  # an empty battery bay
    energy_now = _read_float(supply / "energy_now")  # µWh
    energy_full = _read_float(supply / "energy_full")
    charge_now = _read_float(supply / "charge_now")  # µAh
    charge_full = _read_float(supply / "charge_full")
    percent = _read_float(supply / "capacity")
    if percent is None:
        percent = _ratio_percent(energy_now, energy_full)
    if percent is None:
        percent = _ratio_percent(charge_now, charge_full)
    if percent is None:
        log.debug("battery %s: no capacity, energy or charge figures", supply.name)
        return None
    status = _read_text(supply / "status")
    charging = _CHARGING_BY_STATUS.get(status.lower()) if status is not None else None
    return _Battery(
        percent=_clamp_percent(percent),
        charging=charging,
        power_w=_battery_power_w(supply),
        full_wh=_full_energy_wh(supply, energy_full, charge_full),
    )


def _ratio_percent(now: float | None, full: float | None) -> float | None:
    if now is None or full is None or full <= 0:
        return None
    return 100.0 * now / full


def _battery_power_w(supply: Path) -> float | None:
    # Some drivers sign power and current by direction; only the magnitude is wanted here.
    power_uw = _read_float(supply / "power_now")
    if power_uw is not None:
        return abs(power_uw) / 1e6
    current_ua = _read_float(supply / "current_now")
    voltage_uv = _read_float(supply / "voltage_now")
    if current_ua is not None and voltage_uv is not None:
        return abs(current_ua * voltage_uv) / 1e12
    return None


def _full_energy_wh(
    supply: Path, energy_full: float | None, charge_full: float | None
) -> float | None:
    if energy_full is not None and energy_full > 0:
        return energy_full / 1e6
    if charge_full is None or charge_full <= 0:
        return None
    # Charge-only batteries: the nominal (design minimum) voltage turns µAh into energy; the
    # present voltage is close enough when the design figure is missing.
    voltage_uv = _read_float(supply / "voltage_min_design") or _read_float(supply / "voltage_now")
    if voltage_uv is None or voltage_uv <= 0:
        return None
    return charge_full * voltage_uv / 1e12


def _clamp_percent(percent: float) -> float:
    # Firmware reports over 100% (or energy_now over energy_full) on fresh or recalibrated packs.
    return min(max(percent, 0.0), 100.0)


# --- board power (INA3221) ----------------------------------------------------------------------


def read_board_power(root: Path = Path("/")) -> PowerReading | None:
    """A Jetson's board power from its INA3221 monitor(s); None where there is none.

    Two layouts: L4T 32 (``ina3221x`` IIO driver: ``in_power{0,1,2}_input`` in mW with
    ``rail_name_{0,1,2}``) and L4T 34+ (``ina3221`` hwmon driver: ``in{1,2,3}_input`` in mV times
    ``curr{1,2,3}_input`` in mA, named by ``in{1,2,3}_label``). ``total_w``: the input rail's power
    when a rail is named like VDD_IN or POM_5V_IN (it already includes the other rails, which are
    branches of it), else the sum of all rails. Rails with no label are named
    ``<chip>/<channel>``; a name seen twice gets a ``#2`` suffix.
    """
    rails: dict[str, float] = {}
    for name, watts in (*_iio_rails(Path(root)), *_hwmon_rails(Path(root))):
        unique, n = name, 1
        while unique in rails:
            n += 1
            unique = f"{name}#{n}"
        rails[unique] = watts
    if not rails:
        return None
    inputs = [w for name, w in rails.items() if _INPUT_RAIL.search(name.split("#")[0].upper())]
    total = sum(inputs) if inputs else sum(rails.values())
    return PowerReading(total_w=total, rails=rails)


def _iio_rails(root: Path) -> Iterable[tuple[str, float]]:
    for chip in _children(root / INA3221_IIO_DIR):
        for device in _glob(chip, "iio:device*"):
            for channel in range(3):
                name = _read_text(device / f"rail_name_{channel}") or f"{chip.name}/{channel}"
                power_mw = _read_float(device / f"in_power{channel}_input")
                if power_mw is None:
                    # Some kernels expose only voltage and current for a channel.
                    power_mw = _product_milli(
                        _read_float(device / f"in_voltage{channel}_input"),
                        _read_float(device / f"in_current{channel}_input"),
                    )
                if _usable_rail(name, power_mw, device) and power_mw is not None:
                    yield name, power_mw / 1e3


def _hwmon_rails(root: Path) -> Iterable[tuple[str, float]]:
    for chip in _children(root / INA3221_HWMON_DIR):
        for hwmon in _glob(chip / "hwmon", "hwmon*"):
            for channel in (1, 2, 3):
                name = _read_text(hwmon / f"in{channel}_label") or f"{chip.name}/{channel}"
                power_mw = _product_milli(
                    _read_float(hwmon / f"in{channel}_input"),
                    _read_float(hwmon / f"curr{channel}_input"),
                )
                if _usable_rail(name, power_mw, hwmon) and power_mw is not None:
                    yield name, power_mw / 1e3


def _product_milli(millivolts: float | None, milliamps: float | None) -> float | None:
    """mV times mA in mW."""
    if millivolts is None or milliamps is None:
        return None
    return millivolts * milliamps / 1e3


def _usable_rail(name: str, power_mw: float | None, where: Path) -> bool:
    if name.upper() in _UNCONNECTED_LABELS or power_mw is None:
        return False
    if power_mw < 0:
        log.debug("%s: rail %s reads negative power %r; skipped", where, name, power_mw)
        return False
    return True


# --- sysfs helpers ------------------------------------------------------------------------------


def _children(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except OSError:
        return []  # absent hardware, or no permission to look


def _glob(directory: Path, pattern: str) -> list[Path]:
    try:
        return sorted(directory.glob(pattern))
    except OSError:
        return []


def _read_text(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        # ENODATA/EIO from a driver, a directory where a file was expected, binary junk.
        log.debug("%s: unreadable: %s", path, exc)
        return None
    return text or None


def _read_float(path: Path) -> float | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        log.debug("%s: not a number: %.40r", path, text)
        return None
    if not math.isfinite(value):
        log.debug("%s: not finite: %r", path, value)
        return None
    return value
