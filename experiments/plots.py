"""The bench's plots: PNG files drawn with matplotlib's Agg canvas, never a display.

Figures are built with :class:`matplotlib.figure.Figure` directly, not pyplot: no global figure
state, no backend selection, nothing that could try to open a window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments.metrics import parse_report
from schemas.report import RunReport

__all__ = ["ADAPTIVE", "PLOT_FILES", "write_plots"]

PLOT_FILES = ("accuracy_time.png", "splits.png", "energy.png", "round_times.png")
ADAPTIVE = ("ares", "static")  # the policies whose cuts are worth drawing round by round
DPI = 110
SPLIT_OFFSET = 0.05  # cuts apart per device in the split plot


def write_plots(results: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Draw every plot the results allow into ``out_dir``; returns the files written.

    ``splits.png`` needs an ``ares`` or ``static`` run; the others need any finished run.
    """
    reports: Mapping[str, Mapping[str, Any]] = results["policies"]
    runs = {name: parse_report(name, report).report for name, report in reports.items()}
    if not runs:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    target = results.get("summary", {}).get("target_accuracy")
    written = [
        _save(_accuracy_figure(runs, target), out_dir / "accuracy_time.png"),
        _save(_energy_figure(runs), out_dir / "energy.png"),
        _save(_round_time_figure(runs), out_dir / "round_times.png"),
    ]
    adaptive = {name: run for name, run in runs.items() if name in ADAPTIVE}
    if adaptive:
        written.insert(1, _save(_split_figure(adaptive), out_dir / "splits.png"))
    return written


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)  # attaches the Agg canvas: rendering never touches a display
    figure.savefig(path, dpi=DPI)
    return path


def _colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per name, stable across the figures (tab10, cycling)."""
    return {name: f"C{index % 10}" for index, name in enumerate(names)}


def _devices(runs: Mapping[str, RunReport]) -> list[str]:
    return sorted({d for run in runs.values() for r in run.rounds for d in r.devices})


def _accuracy_figure(runs: Mapping[str, RunReport], target: float | None) -> Figure:
    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    axes = figure.subplots()
    colours = _colours(list(runs))
    for name, run in runs.items():
        # From the initial model's accuracy at 0 s, where the edge evaluated it.
        times: list[float] = [] if run.initial_accuracy is None else [0.0]
        accuracy: list[float] = [] if run.initial_accuracy is None else [run.initial_accuracy]
        elapsed = 0.0
        for entry in run.rounds:
            elapsed += entry.duration_s
            times.append(elapsed)
            accuracy.append(entry.accuracy)
        axes.plot(times, accuracy, marker="o", markersize=3, label=name, color=colours[name])
    if target is not None:
        axes.axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
    axes.set_xlabel("training time, s (sum of round durations)")
    axes.set_ylabel("test accuracy")
    axes.set_title("Accuracy against training time")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def _split_figure(runs: Mapping[str, RunReport]) -> Figure:
    devices = _devices(runs)
    colours = _colours(devices)
    figure = Figure(figsize=(5.5 * len(runs), 6), layout="constrained")
    grid = figure.subplots(2, len(runs), sharex="col", squeeze=False)
    for column, (name, run) in enumerate(runs.items()):
        cuts, link = grid[0][column], grid[1][column]
        for index, device in enumerate(devices):
            # A small offset per device keeps devices on the same cut from hiding each other.
            offset = (index - (len(devices) - 1) / 2) * SPLIT_OFFSET
            rounds = [r.round for r in run.rounds if device in r.devices]
            split = [r.devices[device].cut + offset for r in run.rounds if device in r.devices]
            cuts.step(rounds, split, where="mid", marker="o", markersize=4, label=device,
                      color=colours[device])  # fmt: skip
            measured = [
                (r.round, r.devices[device].uplink_mbps)
                for r in run.rounds
                if device in r.devices and r.devices[device].uplink_mbps is not None
            ]
            if measured:
                xs, ys = zip(*measured, strict=True)
                link.plot(xs, ys, marker="o", markersize=3, color=colours[device], label=device)
        cuts.set_title(f"{name}: split point per device")
        cuts.set_ylabel("cut (blocks on the device; devices offset)")
        cuts.yaxis.get_major_locator().set_params(integer=True)
        cuts.grid(alpha=0.3)
        link.set_title("uplink as the device measured it (telemetry)")
        link.set_ylabel("Mbit/s")
        link.set_xlabel("round")
        link.xaxis.get_major_locator().set_params(integer=True)
        link.grid(alpha=0.3)
    grid[0][0].legend(fontsize="small")
    return figure


def _energy_figure(runs: Mapping[str, RunReport]) -> Figure:
    devices = _devices(runs)
    names = list(runs)
    colours = _colours(names)
    energy = {name: _energy_by_device(run) for name, run in runs.items()}
    figure = Figure(figsize=(max(7.5, 1.2 * len(devices) * len(names) / 2 + 3), 4.5),
                    layout="constrained")  # fmt: skip
    per_device, totals = figure.subplots(1, 2, width_ratios=[3, 1])
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        xs = [d + (index - (len(names) - 1) / 2) * width for d in range(len(devices))]
        ys = [energy[name].get(device, 0.0) for device in devices]
        per_device.bar(xs, ys, width=width, label=name, color=colours[name])
    per_device.set_xticks(range(len(devices)), devices, rotation=20)
    per_device.set_ylabel("device energy, J (all rounds)")
    per_device.set_title("Energy per device")
    per_device.grid(axis="y", alpha=0.3)
    per_device.legend(fontsize="small")
    _bar_totals(totals, names, [sum(energy[n].values()) for n in names], colours)
    return figure


def _bar_totals(axes: Axes, names: list[str], values: list[float], colours: dict[str, str]) -> None:
    axes.bar(range(len(names)), values, color=[colours[n] for n in names])
    axes.set_xticks(range(len(names)), names, rotation=30)
    axes.set_title("Total")
    axes.set_ylabel("J")
    axes.grid(axis="y", alpha=0.3)


def _energy_by_device(run: RunReport) -> dict[str, float]:
    totals: dict[str, float] = {}
    for entry in run.rounds:
        for device, data in entry.devices.items():
            totals[device] = totals.get(device, 0.0) + data.energy_j
    return totals


def _round_time_figure(runs: Mapping[str, RunReport]) -> Figure:
    devices = _devices(runs)
    colours = _colours(devices)
    figure = Figure(figsize=(4.2 * len(runs), 4.2), layout="constrained")
    panels = figure.subplots(1, len(runs), sharey=True, squeeze=False)[0]
    for axes, (name, run) in zip(panels, runs.items(), strict=True):
        for device in devices:
            points = [(r.round, r.devices[device]) for r in run.rounds if device in r.devices]
            if not points:
                continue
            axes.plot([p[0] for p in points], [p[1].time_s for p in points], marker="o",
                      markersize=3, color=colours[device], label=device)  # fmt: skip
            for statuses, marker, colour in (
                (("straggler", "late"), "X", "red"),
                (("dropped", "aborted"), "v", "black"),
            ):
                late = [(r, d.time_s) for r, d in points if d.status in statuses]
                if late:
                    xs, ys = zip(*late, strict=True)
                    axes.scatter(xs, ys, marker=marker, s=70, color=colour, zorder=3)
        axes.plot([r.round for r in run.rounds], [r.duration_s for r in run.rounds], color="grey",
                  linestyle="--", linewidth=1, label="round (edge)")  # fmt: skip
        axes.set_title(name)
        axes.set_xlabel("round")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
    panels[0].set_ylabel("device round time, s (start sent to part received)")
    panels[0].scatter([], [], marker="X", color="red", label="straggler / late")
    panels[0].scatter([], [], marker="v", color="black", label="dropped / aborted")
    panels[0].legend(fontsize="small")
    figure.suptitle("Round time per device")
    return figure
