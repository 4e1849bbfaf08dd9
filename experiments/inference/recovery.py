"""After a link drop: when the plan moved, and the p99 latency before the drop, right after it,
and after the re-plan (issue 15, point 8). Pure: from the records, the plan messages and the
links' schedules."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from experiments.inference.aggregate import Record, windows_p99

__all__ = ["LinkDrop", "link_drops", "plan_entry_at", "recovery"]

WINDOW_S = 10.0  # the windows before the drop and after the re-plan
RECOVERED_WITHIN = 1.2  # p99 after the re-plan at most this times the p99 before: recovered


@dataclass(frozen=True)
class LinkDrop:
    device: str
    at_s: float  # on the load's clock
    from_mbps: float
    to_mbps: float


def link_drops(links: Mapping[str, Mapping[str, Any]]) -> list[LinkDrop]:
    """Every step down of a device's uplink, from ``links`` (per device: ``origin_s`` and its
    uplink's ``changes`` as ``[t_s, mbps]`` on the run's clock), in time order."""
    drops = []
    for device, link in links.items():
        changes = link["changes"]
        for (_, before), (t, after) in itertools.pairwise(changes):
            if after < before:
                drops.append(LinkDrop(device, link["origin_s"] + t, before, after))
    return sorted(drops, key=lambda d: d.at_s)


def plan_entry_at(
    plans: Sequence[tuple[float, Mapping[str, Any]]], device: str, at_s: float
) -> tuple[int, float | None] | None:
    """The (cut, threshold) in force for ``device`` at ``at_s``, by the plans' arrivals."""
    entry = None
    for arrived, plan in plans:
        if arrived > at_s:
            break
        found = plan["devices"].get(device)
        if found is not None:
            entry = (found["cut"], found["threshold"])
    return entry


def recovery(
    records: Sequence[Record],
    plans: Sequence[tuple[float, Mapping[str, Any]]],
    drop: LinkDrop,
    end_s: float,
) -> dict[str, Any]:
    """The drop's re-plan (the first plan after it that changes the device's entry), its
    delay, and the p99 windows for the device and for the whole fleet."""
    before = plan_entry_at(plans, drop.device, drop.at_s)
    replan_s = None
    after_entry = None
    for arrived, plan in plans:
        found = plan["devices"].get(drop.device)
        if arrived > drop.at_s and found is not None:
            entry = (found["cut"], found["threshold"])
            if entry != before:
                replan_s, after_entry = arrived, entry
                break
    bounds = {"before_drop": (max(0.0, drop.at_s - WINDOW_S), drop.at_s)}
    if replan_s is None:
        bounds["after_drop"] = (drop.at_s, end_s)
    else:
        bounds["after_drop"] = (drop.at_s, replan_s)
        bounds["after_replan"] = (replan_s, min(end_s, replan_s + WINDOW_S))
    device_records = [r for r in records if r.device == drop.device]
    device_windows = windows_p99(device_records, bounds)
    recovered = recovered_on_device = None
    if replan_s is not None:
        recovered = _recovered(device_windows, "latency_ms_p99")
        recovered_on_device = _recovered(device_windows, "device_latency_ms_p99")
    return {
        "device": drop.device,
        "drop_s": drop.at_s,
        "from_mbps": drop.from_mbps,
        "to_mbps": drop.to_mbps,
        "plan_before": _entry(before),
        "replan_s": replan_s,
        "drop_to_replan_s": None if replan_s is None else replan_s - drop.at_s,
        "plan_after": _entry(after_entry),
        "device_windows": device_windows,
        "fleet_windows": windows_p99(records, bounds),
        "recovered": recovered,
        "recovered_on_device": recovered_on_device,
    }


def _recovered(windows: Mapping[str, Mapping[str, Any]], key: str) -> bool | None:
    """Whether the p99 (``key``) after the re-plan is back within ``RECOVERED_WITHIN`` of the
    p99 before the drop; None without both."""
    before, after = windows["before_drop"][key], windows["after_replan"][key]
    if before is None or after is None:
        return None
    return bool(after <= RECOVERED_WITHIN * before)


def _entry(entry: tuple[int, float | None] | None) -> dict[str, Any] | None:
    return None if entry is None else {"cut": entry[0], "threshold": entry[1]}
