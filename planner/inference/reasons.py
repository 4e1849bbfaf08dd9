"""One line per device that says why its setting was chosen, naming the deciding quantities:
what the exits answer locally, what sending the cut tensor costs at the device's link rate, the
predicted latency and energy, the accuracy against its floor, the battery rule, and what the best
setting at another cut would cost instead."""

from __future__ import annotations

from collections.abc import Callable

from planner.inference.options import DeviceOptions
from planner.inference.points import exits_on

__all__ = ["describe", "explain", "label"]


def label(cut: int, threshold: float, blocks: int) -> str:
    """``cut 2, exits at 0.9``; ``cut 0 (all on the edge)``; ``cut 7 (all on the device), ...``."""
    if cut == 0:
        return "cut 0 (all on the edge)"
    where = f"cut {cut} (all on the device)" if cut >= blocks else f"cut {cut}"
    return f"{where}, exits at {threshold:g}" if exits_on(threshold) else f"{where}, exits off"


def describe(options: DeviceOptions, k: int) -> str:
    """What option ``k`` does and costs, in one line."""
    inputs, device = options.inputs, options.device
    blocks = inputs.blocks
    cut, threshold = int(options.cuts[k]), float(options.thresholds[k])
    local = float(options.local_fraction[k])
    parts = [label(cut, threshold, blocks)]
    if cut >= blocks:
        early = sum(options.exit_fractions[k].values())
        by_exit = f", {_pct(early)} by an early exit" if exits_on(threshold) else ""
        parts.append(f"every request answered on the device{by_exit}")
    else:
        if cut > 0 and exits_on(threshold):
            parts.append(f"{_pct(local)} answered on the device")
        tensor = "the raw input" if cut == 0 else f"the cut-{cut} activation"
        size = inputs.model.sent_bytes(cut) * device.wire_scale
        parts.append(
            f"sending {tensor} ({size / 1e3:.3g} kB) costs {_ms(float(options.send_s[k]))} at "
            f"{device.uplink_bps / 1e6:.3g} Mbit/s"
        )
    parts.append(
        f"{_ms(float(options.latency_s[k]))} and {_mj(float(options.energy_j[k]))} per request, "
        f"accuracy {_pct(float(options.accuracy[k]), 1)} "
        f"(floor {_pct(inputs.accuracy_bound, 1)})"
    )
    return "; ".join(parts)


def explain(options: DeviceOptions, k: int, *, accuracy_met: bool, runner_up: int | None) -> str:
    """The full reason for choosing option ``k``: its description, the battery rule, the accuracy
    fallback, and the runner-up's cost relative to it."""
    inputs, device = options.inputs, options.device
    parts = [describe(options, k)]
    battery = device.battery_fraction
    if options.forced and battery is not None:
        parts.append(
            f"battery {_pct(battery)} below the {_pct(inputs.battery_floor)} floor: "
            "least device energy"
        )
    elif options.weight != 1.0 and battery is not None:
        parts.append(f"battery {_pct(battery)}: its energy weighs {options.weight:.2g}x")
    if not accuracy_met:
        parts.append(
            f"no allowed setting reaches the accuracy floor {_pct(inputs.accuracy_bound, 1)}: "
            "the most accurate is taken"
        )
    if runner_up is not None:
        r = runner_up
        other = label(int(options.cuts[r]), float(options.thresholds[r]), inputs.blocks)
        latency = _versus(float(options.latency_s[r]), float(options.latency_s[k]), _ms)
        energy = _versus(float(options.energy_j[r]), float(options.energy_j[k]), _mj)
        parts.append(f"{other} would take {latency} the latency and {energy} the energy")
    return "; ".join(parts)


def _versus(other: float, chosen: float, unit: Callable[[float], str]) -> str:
    """``3x`` (other against chosen), or both values where the chosen one is 0."""
    if chosen > 0.0:
        return f"{other / chosen:.2g}x"
    return f"{unit(other)} against {unit(chosen)} for"


def _pct(value: float, digits: int = 0) -> str:
    return f"{value * 100:.{digits}f}%"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _mj(joules: float) -> str:
    return f"{joules * 1e3:.3g} mJ"
