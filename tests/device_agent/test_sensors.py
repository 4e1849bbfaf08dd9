"""Battery and board-power readers against fake sysfs trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.ports import BatteryReading, PowerReading
from device_agent.sensors import read_battery, read_board_power


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content + "\n")
    return root


def supply(name: str, **attributes: str | bytes) -> dict[str, str | bytes]:
    return {f"sys/class/power_supply/{name}/{key}": value for key, value in attributes.items()}


# --- battery ------------------------------------------------------------------------------------


def test_no_sysfs_at_all_is_no_battery(tmp_path: Path) -> None:
    assert read_battery(tmp_path) is None
    assert read_battery(tmp_path / "does-not-exist") is None


def test_mains_only_machine_is_no_battery(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        supply("AC", type="Mains", online="1") | supply("usb", type="USB", online="0"),
    )
    assert read_battery(tmp_path) is None


def test_capacity_status_and_power_now(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        supply("AC", type="Mains", online="0")
        | supply(
            "BAT0",
            type="Battery",
            status="Discharging",
            capacity="57",
            power_now="8500000",  # µW
            energy_now="1",  # ignored: capacity wins
            energy_full="1000",
        ),
    )
    assert read_battery(tmp_path) == BatteryReading(percent=57.0, charging=False, power_w=8.5)


def test_energy_ratio_without_capacity(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        supply(
            "BAT0", type="Battery", status="Charging", energy_now="30000000", energy_full="40000000"
        ),
    )
    reading = read_battery(tmp_path)
    assert reading is not None
    assert reading.percent == pytest.approx(75.0)
    assert reading.charging is True
    assert reading.power_w is None


def test_charge_ratio_and_current_times_voltage(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        supply(
            "battery",
            type="Battery",
            status="Full",
            charge_now="1500000",  # µAh
            charge_full="2000000",
            current_now="-500000",  # µA, signed by direction on some drivers
            voltage_now="4000000",  # µV
        ),
    )
    reading = read_battery(tmp_path)
    assert reading is not None
    assert reading.percent == pytest.approx(75.0)
    assert reading.charging is False
    assert reading.power_w == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("status", "charging"),
    [
        ("Charging", True),
        ("Discharging", False),
        ("Full", False),
        ("Not charging", False),
        ("Unknown", None),
        ("Something odd", None),
    ],
)
def test_status_to_charging(tmp_path: Path, status: str, charging: bool | None) -> None:
    write_tree(tmp_path, supply("BAT0", type="Battery", capacity="50", status=status))
    reading = read_battery(tmp_path)
    assert reading is not None
    assert reading.charging is charging


def test_missing_status_is_unknown(tmp_path: Path) -> None:
    write_tree(tmp_path, supply("BAT0", type="Battery", capacity="50"))
    assert read_battery(tmp_path) == BatteryReading(percent=50.0, charging=None, power_w=None)


def test_peripheral_and_absent_batteries_are_skipped(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        supply("hid-mouse-battery", type="Battery", scope="Device", capacity="5")
        | supply("BAT1", type="Battery", present="0", capacity="0"),
    )
    assert read_battery(tmp_path) is None
    write_tree(tmp_path, supply("BAT0", type="Battery", scope="System", capacity="80"))
    reading = read_battery(tmp_path)
    assert reading is not None
    assert reading.percent == 80.0


def test_capacity_is_clamped(tmp_path: Path) -> None:
    write_tree(tmp_path, supply("BAT0", type="Battery", capacity="104"))
    reading = read_battery(tmp_path)
    assert reading is not None
    assert reading.percent == 100.0


def test_multiple_batteries_combine_by_energy(tmp_path: Path) -> None:
    # 10 of 20 Wh and 40 of 80 Wh... plus a 10 Wh pack full: 60 of 110 Wh left in all.
    write_tree(
        tmp_path,
        supply(
            "BAT0",
            type="Battery",
            status="Discharging",
            energy_now="10000000",
            energy_full="20000000",
            power_now="3000000",
        )
        | supply(
            "BAT1",
            type="Battery",
            status="Charging",
            energy_now="40000000",
            energy_full="80000000",
            power_now="1000000",
        )
        | supply(
            "BAT2",
            type="Battery",
            status="Full",
            capacity="100",
            charge_full="2500000",  # µAh at a 4 V design minimum: 10 Wh
            voltage_min_design="4000000",
        ),
    )
    reading = read_battery(tmp_path)
    assert reading is not None
    assert reading.percent == pytest.approx(100 * 60 / 110)
    assert reading.charging is True  # one of them charges
    assert reading.power_w == pytest.approx(4.0)


def test_multiple_batteries_without_energy_figures_average(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        supply("BAT0", type="Battery", capacity="20", status="Discharging")
        | supply("BAT1", type="Battery", capacity="60", status="Unknown"),
    )
    reading = read_battery(tmp_path)
    assert reading == BatteryReading(percent=40.0, charging=False, power_w=None)


@pytest.mark.parametrize(
    "garbage",
    ["", "abc", "nan", "inf", "12 34", b"\xff\xfe\x00"],
)
def test_garbage_battery_content_never_raises(tmp_path: Path, garbage: str | bytes) -> None:
    write_tree(
        tmp_path,
        supply(
            "BAT0",
            type="Battery",
            capacity=garbage,
            energy_now=garbage,
            energy_full=garbage,
            charge_now=garbage,
            charge_full=garbage,
            power_now=garbage,
            status=garbage,
        ),
    )
    assert read_battery(tmp_path) is None


def test_garbage_falls_back_to_the_next_figure(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        supply(
            "BAT0",
            type="Battery",
            capacity="??",
            energy_now="5",
            energy_full="0",  # no division by zero
            charge_now="1",
            charge_full="4",
            power_now="junk",
            current_now="1000000",
            voltage_now="5000000",
        ),
    )
    reading = read_battery(tmp_path)
    assert reading == BatteryReading(percent=25.0, charging=None, power_w=5.0)


def test_unreadable_entries_are_skipped(tmp_path: Path) -> None:
    # A directory where a file should be (reading raises IsADirectoryError) and a stray file.
    (tmp_path / "sys/class/power_supply/BAT0/type").mkdir(parents=True)
    (tmp_path / "sys/class/power_supply/stray").write_text("not a supply")
    write_tree(tmp_path, supply("BAT1", type="Battery", capacity="33"))
    reading = read_battery(tmp_path)
    assert reading is not None
    assert reading.percent == 33.0


def test_power_supply_is_a_file_not_a_directory(tmp_path: Path) -> None:
    write_tree(tmp_path, {"sys/class/power_supply": "oops"})
    assert read_battery(tmp_path) is None


# --- board power --------------------------------------------------------------------------------

NANO_IIO = "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
ORIN_HWMON = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"


def test_no_power_monitor(tmp_path: Path) -> None:
    assert read_board_power(tmp_path) is None


def test_old_l4t_iio_layout_uses_the_input_rail(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            f"{NANO_IIO}/rail_name_0": "POM_5V_IN",
            f"{NANO_IIO}/in_power0_input": "4210",  # mW
            f"{NANO_IIO}/rail_name_1": "POM_5V_GPU",
            f"{NANO_IIO}/in_power1_input": "1080",
            f"{NANO_IIO}/rail_name_2": "POM_5V_CPU",
            f"{NANO_IIO}/in_power2_input": "1520",
        },
    )
    reading = read_board_power(tmp_path)
    assert isinstance(reading, PowerReading)
    assert reading.rails == {
        "POM_5V_IN": pytest.approx(4.21),
        "POM_5V_GPU": pytest.approx(1.08),
        "POM_5V_CPU": pytest.approx(1.52),
    }
    assert reading.total_w == pytest.approx(4.21)  # the input rail, not the sum


def test_old_layout_without_input_rail_sums(tmp_path: Path) -> None:
    # TX2/Xavier-like: two monitors, no board input rail among them.
    second = "sys/bus/i2c/drivers/ina3221x/0-0041/iio:device1"
    write_tree(
        tmp_path,
        {
            f"{NANO_IIO}/rail_name_0": "VDD_SYS_GPU",
            f"{NANO_IIO}/in_power0_input": "1000",
            f"{second}/rail_name_0": "VDD_SYS_CPU",
            f"{second}/in_power0_input": "500",
            # No rail name: named by chip and channel; voltage x current when power is missing.
            f"{second}/in_voltage1_input": "5000",  # mV
            f"{second}/in_current1_input": "100",  # mA
        },
    )
    reading = read_board_power(tmp_path)
    assert reading is not None
    assert reading.rails == {
        "VDD_SYS_GPU": pytest.approx(1.0),
        "VDD_SYS_CPU": pytest.approx(0.5),
        "0-0041/1": pytest.approx(0.5),
    }
    assert reading.total_w == pytest.approx(2.0)


def test_new_l4t_hwmon_layout(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            f"{ORIN_HWMON}/in1_label": "VDD_IN",
            f"{ORIN_HWMON}/in1_input": "5000",  # mV
            f"{ORIN_HWMON}/curr1_input": "1200",  # mA
            f"{ORIN_HWMON}/in2_label": "VDD_CPU_GPU_CV",
            f"{ORIN_HWMON}/in2_input": "5000",
            f"{ORIN_HWMON}/curr2_input": "400",
            f"{ORIN_HWMON}/in3_label": "VDD_SOC",
            f"{ORIN_HWMON}/in3_input": "5000",
            f"{ORIN_HWMON}/curr3_input": "300",
        },
    )
    reading = read_board_power(tmp_path)
    assert reading is not None
    assert reading.rails == {
        "VDD_IN": pytest.approx(6.0),
        "VDD_CPU_GPU_CV": pytest.approx(2.0),
        "VDD_SOC": pytest.approx(1.5),
    }
    assert reading.total_w == pytest.approx(6.0)


def test_hwmon_without_input_rail_sums_and_skips_unconnected(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            f"{ORIN_HWMON}/in1_label": "VDD_GPU",
            f"{ORIN_HWMON}/in1_input": "1000",
            f"{ORIN_HWMON}/curr1_input": "1000",
            f"{ORIN_HWMON}/in2_label": "VDD_CPU",
            f"{ORIN_HWMON}/in2_input": "1000",
            f"{ORIN_HWMON}/curr2_input": "2000",
            f"{ORIN_HWMON}/in3_label": "NC",
            f"{ORIN_HWMON}/in3_input": "1000",
            f"{ORIN_HWMON}/curr3_input": "9000",
        },
    )
    reading = read_board_power(tmp_path)
    assert reading is not None
    assert set(reading.rails) == {"VDD_GPU", "VDD_CPU"}
    assert reading.total_w == pytest.approx(3.0)


def test_duplicate_rail_names_stay_apart(tmp_path: Path) -> None:
    other = "sys/bus/i2c/drivers/ina3221/1-0041/hwmon/hwmon4"
    files: dict[str, str | bytes] = {}
    for base in (ORIN_HWMON, other):
        files |= {
            f"{base}/in1_label": "VDD_GPU",
            f"{base}/in1_input": "1000",
            f"{base}/curr1_input": "1000",
        }
    write_tree(tmp_path, files)
    reading = read_board_power(tmp_path)
    assert reading is not None
    assert set(reading.rails) == {"VDD_GPU", "VDD_GPU#2"}
    assert reading.total_w == pytest.approx(2.0)


@pytest.mark.parametrize("garbage", ["", "x", "nan", "-inf", "-500", b"\xff\x00"])
def test_garbage_power_content_never_raises(tmp_path: Path, garbage: str | bytes) -> None:
    write_tree(
        tmp_path,
        {
            f"{NANO_IIO}/rail_name_0": "POM_5V_IN",
            f"{NANO_IIO}/in_power0_input": garbage,
            f"{ORIN_HWMON}/in1_label": "VDD_IN",
            f"{ORIN_HWMON}/in1_input": garbage,
            f"{ORIN_HWMON}/curr1_input": "100",
        },
    )
    assert read_board_power(tmp_path) is None


def test_garbage_rail_leaves_the_good_ones(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            f"{NANO_IIO}/rail_name_0": "POM_5V_IN",
            f"{NANO_IIO}/in_power0_input": "garbage",
            f"{NANO_IIO}/rail_name_1": "POM_5V_GPU",
            f"{NANO_IIO}/in_power1_input": "700",
        },
    )
    reading = read_board_power(tmp_path)
    assert reading is not None
    assert reading.rails == {"POM_5V_GPU": pytest.approx(0.7)}
    assert reading.total_w == pytest.approx(0.7)
