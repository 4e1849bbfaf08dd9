"""The serving bench's plots (matplotlib's Agg canvas, never a display, as experiments.plots):
the latency distribution per policy, and per policy a timeline of every device's cut and exit
rate with its link rate on the same time axis."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from experiments.inference.aggregate import Record
from experiments.inference.load import PolicyTrace

__all__ = ["BIN_S", "exit_rate_bins", "write_plots"]

DPI = 110
BIN_S = 2.0  # the exit rate's bins over send time


def write_plots(
    document: Mapping[str, Any], traces: Mapping[str, PolicyTrace], out: Path
) -> list[Path]:
    written = [_save(_latency_figure(traces), out / "latency_cdf.png")]
    for name, trace in traces.items():
        links = document["policies"][name]["links"]
        figure = _timeline_figure(name, trace, links)
        written.append(_save(figure, out / f"timeline-{name}.png"))
    return written


def exit_rate_bins(records: Sequence[Record], end_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres and, per bin of send time, the share of labelled answers that left at an
    exit (NaN for a bin without any)."""
    edges = np.arange(0.0, max(end_s, BIN_S) + BIN_S, BIN_S)
    labelled = [r for r in records if r.label is not None]
    rates = np.full(len(edges) - 1, np.nan)
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        inside = [r for r in labelled if lo <= r.sent_s < hi]
        if inside:
            rates[i] = sum(r.exited for r in inside) / len(inside)
    return (edges[:-1] + edges[1:]) / 2, rates


def _latency_figure(traces: Mapping[str, PolicyTrace]) -> Figure:
    figure = Figure(figsize=(7, 4.5))
    ax = figure.add_subplot()
    for index, (name, trace) in enumerate(traces.items()):
        values = np.sort([lat for r in trace.records if (lat := r.latency_ms) is not None])
        if len(values):
            share = np.arange(1, len(values) + 1) / len(values)
            ax.step(values, share, where="post", label=name, color=f"C{index % 10}")
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms, log scale)")
    ax.set_ylabel("share of requests answered within")
    ax.set_title("Latency distribution per policy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    figure.tight_layout()
    return figure


def _timeline_figure(
    name: str, trace: PolicyTrace, links: Mapping[str, Mapping[str, Any]]
) -> Figure:
    devices = list(links)
    end_s = max((r.sent_s for r in trace.records), default=BIN_S)
    figure = Figure(figsize=(11, 2.2 * len(devices) + 0.8))
    axes = figure.subplots(len(devices), 2, squeeze=False, sharex=True)
    for row, device in enumerate(devices):
        cut_ax, exit_ax = axes[row]
        times, cuts = _cuts(trace.plans, device, end_s)
        cut_ax.step(times, cuts, where="post", color="C0")
        cut_ax.set_ylim(-0.5, max([*cuts, 1]) + 0.5)
        cut_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        cut_ax.set_ylabel(f"{device}\ncut", color="C0")
        records = [r for r in trace.records if r.device == device]
        centres, rates = exit_rate_bins(records, end_s)
        exit_ax.plot(centres, rates, marker=".", color="C2")
        exit_ax.set_ylim(-0.05, 1.05)
        exit_ax.set_ylabel("exit rate", color="C2")
        for ax in (cut_ax, exit_ax):
            _link_axis(ax, links[device], end_s)
            ax.grid(True, alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("time since the load began (s)")
    figure.suptitle(f"{name}: cut and exit rate per device, with its uplink rate (grey)")
    figure.tight_layout()
    return figure


def _cuts(
    plans: Sequence[tuple[float, Mapping[str, Any]]], device: str, end_s: float
) -> tuple[list[float], list[float]]:
    """The device's planned cut over time (the plan in force at the load's start first)."""
    times: list[float] = []
    cuts: list[float] = []
    for at, plan in plans:
        entry = plan["devices"].get(device)
        if entry is None:
            continue
        t = max(at, 0.0)
        if times and times[-1] == t:
            cuts[-1] = entry["cut"]
        else:
            times.append(t)
            cuts.append(entry["cut"])
    if times:
        times.append(end_s)
        cuts.append(cuts[-1])
    return times, cuts


def _link_axis(ax: Axes, link: Mapping[str, Any], end_s: float) -> None:
    twin = ax.twinx()
    origin = link["origin_s"]
    changes = link["changes"]
    times = [max(origin + t, 0.0) for t, _ in changes] + [end_s]
    rates = [mbps for _, mbps in changes] + [changes[-1][1]]
    twin.step(times, rates, where="post", color="grey", alpha=0.6, linestyle="--")
    twin.set_ylabel("Mbit/s", color="grey")
    twin.set_ylim(0, max(rates) * 1.15)


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI)
    return path
