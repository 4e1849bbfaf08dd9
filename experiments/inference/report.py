"""summary.md and the printed table of a serving bench, from its results document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["goal_check", "render_summary", "summary_table"]

GOAL_REDUCTION = 0.40  # issue 15, point 8: at least 40% lower mean latency and device energy
ACCURACY_POINTS = 0.01  # ... at the full model's accuracy, within one point


def summary_table(document: Mapping[str, Any]) -> str:
    """The per-policy table, as markdown."""
    full = document["full_accuracy"]
    rows = [
        "| policy | mean ms | p50 ms | p99 ms | on device: mean ms | p99 ms | energy mJ/request | "
        "accuracy | vs full model | exit rate | to edge | sent | answered | degraded | errors | "
        "lost |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: | ---: | ---: | ---: |",
    ]
    for name, p in document["policies"].items():
        accuracy = p["accuracy"]
        delta = "-" if accuracy is None else f"{(accuracy - full) * 100:+.1f} pt"
        rows.append(
            f"| {name} | {_f(p['latency_ms_mean'])} | {_f(p['latency_ms_p50'])} | "
            f"{_f(p['latency_ms_p99'])} | {_f(p.get('device_latency_ms_mean'))} | "
            f"{_f(p.get('device_latency_ms_p99'))} | {_f(_mj(p['energy_j_per_request']), 3)} | "
            f"{_f(accuracy, 4)} | {delta} | {_f(p['exit_rate'], 3)} | {_f(p['edge_rate'], 3)} | "
            f"{p['sent']} | {p['answered']} | {p['degraded']} | {p['errors']} | {p['lost']} |"
        )
    return "\n".join(rows)


def goal_check(document: Mapping[str, Any]) -> dict[str, Any] | None:
    """ARES against sl-best (point 8); None without both."""
    policies = document["policies"]
    ares, sl = policies.get("ares"), policies.get("sl-best")
    if ares is None or sl is None:
        return None
    latency = _change(ares["latency_ms_mean"], sl["latency_ms_mean"])
    on_device = _change(ares.get("device_latency_ms_mean"), sl.get("device_latency_ms_mean"))
    energy = _change(ares["energy_j_per_request"], sl["energy_j_per_request"])
    accuracy = ares["accuracy"]
    same_accuracy = accuracy is not None and accuracy >= document["full_accuracy"] - ACCURACY_POINTS
    return {
        "latency_change": latency,
        "device_latency_change": on_device,
        "energy_change": energy,
        "accuracy": accuracy,
        "same_accuracy": same_accuracy,
        "met": bool(
            same_accuracy
            and latency is not None
            and energy is not None
            and latency <= -GOAL_REDUCTION
            and energy <= -GOAL_REDUCTION
        ),
    }


def render_summary(document: Mapping[str, Any]) -> str:
    artifact = document["artifact"]
    lines = [
        f"# Serving bench: {document['scenario']}",
        "",
        f"{document['requests_per_device']} requests per device at {document['rate']:g}/s "
        f"(open loop), deadline {document['deadline_ms']:g} ms, alpha {document['alpha']:g}, "
        f"seed {document['seed']}. Model {artifact['model']} ({artifact['fingerprint'][:12]}), "
        f"exits at {artifact['exits']}; the full model answers "
        f"{document['full_accuracy']:.4f} of the requests right "
        f"({artifact['full_accuracy']:.4f} on its calibration's validation half).",
        "",
    ]
    if document["policies"]:
        lines += [summary_table(document), ""]
    goal = goal_check(document)
    if goal is not None:
        lines += [
            "## ARES against sl-best (the best fixed cut without exits)",
            "",
            f"- mean latency {_pct(goal['latency_change'])} end to end "
            f"({_pct(goal['device_latency_change'])} on the devices, from a request's arrival), "
            f"device energy per request "
            f"{_pct(goal['energy_change'])}; ARES accuracy {_f(goal['accuracy'], 4)} against "
            f"the full model's {document['full_accuracy']:.4f} "
            f"({'within' if goal['same_accuracy'] else 'not within'} one point)",
            f"- goal (at least 40% lower latency, end to end, and energy at the same "
            f"accuracy): {'met' if goal['met'] else 'not met'}",
            "",
        ]
    lines += _plans(document)
    lines += _recoveries(document)
    lines += _devices(document)
    for name, problem in document["failed"].items():
        lines.append(f"- {name} FAILED: {problem}")
    lines += [
        "",
        "Definitions: latency is end to end, from the load generator's publish to the answer's "
        "arrival; on device: as the device reports it, from the request's arrival on it (the "
        "request's delivery over the device's link, the same for every policy, left out); "
        "accuracy is of the answers with a label against the requests' ground truth; "
        "exit rate is the share of those answered by a device's early exit; energy per request "
        "is each device's own accounting over its serving windows (compute and transmit "
        "seconds at its board's power) over the requests it answered; sent = answered + lost, "
        "answered includes error answers.",
        "",
    ]
    return "\n".join(lines)


def _plans(document: Mapping[str, Any]) -> list[str]:
    lines = ["## The plans in force at the end (the cost model's predictions)", ""]
    lines.append("| policy | device | cut | threshold | predicted ms | predicted mJ | "
                 "measured ms | measured mJ |")  # fmt: skip
    lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, p in document["policies"].items():
        for device, entry in (p.get("plan") or {}).items():
            measured = p["devices"].get(device, {})
            lines.append(
                f"| {name} | {device} | {entry['cut']} | {_f(entry['threshold'], 2)} | "
                f"{_f(entry['predicted_latency_ms'])} | "
                f"{_f(_mj(entry['predicted_energy_j']), 3)} | "
                f"{_f(measured.get('latency_ms_mean'))} | "
                f"{_f(_mj(measured.get('energy_j_per_request')), 3)} |"
            )
    return [*lines, ""]


def _recoveries(document: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, p in document["policies"].items():
        for r in p.get("recovery", ()):
            w = r["device_windows"]
            rows.append(
                f"| {name} | {r['device']} | {r['from_mbps']:g} -> {r['to_mbps']:g} | "
                f"{r['drop_s']:.1f} | {_f(r['drop_to_replan_s'], 1)} | "
                f"{_f(w['before_drop']['latency_ms_p99'])} | "
                f"{_f(w['after_drop']['latency_ms_p99'])} | "
                f"{_f(w.get('after_replan', {}).get('latency_ms_p99'))} | "
                f"{_f(w['before_drop'].get('device_latency_ms_p99'))} / "
                f"{_f(w['after_drop'].get('device_latency_ms_p99'))} / "
                f"{_f(w.get('after_replan', {}).get('device_latency_ms_p99'))} | "
                f"{_plan(r['plan_before'])} -> {_plan(r['plan_after'])} | "
                f"{_yes(r['recovered'])} / {_yes(r.get('recovered_on_device'))} |"
            )
    if not rows:
        return []
    return [
        "## The link drop: p99 latency of the device whose link fell (ms)",
        "",
        "Windows of send times: 10 s before the drop, from the drop to the re-plan (the first "
        "plan that changes the device's entry), 10 s after the re-plan. Recovered: p99 after "
        "the re-plan at most 1.2 times p99 before the drop.",
        "",
        "| policy | device | Mbit/s | drop at s | drop to re-plan s | p99 before | p99 after "
        "drop | p99 after re-plan | on device: p99 before / after drop / after re-plan | plan | "
        "recovered (end to end / on device) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
        *rows,
        "",
    ]


def _devices(document: Mapping[str, Any]) -> list[str]:
    lines = ["## Per device", "", "| policy | device | mean ms | p99 ms | mJ/request | accuracy "
             "| exit rate | to edge | sent | lost |", "| --- | --- | ---: | ---: | ---: | ---: | "
             "---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, p in document["policies"].items():
        for device, d in p["devices"].items():
            lines.append(
                f"| {name} | {device} | {_f(d['latency_ms_mean'])} | {_f(d['latency_ms_p99'])} "
                f"| {_f(_mj(d['energy_j_per_request']), 3)} | {_f(d['accuracy'], 4)} | "
                f"{_f(d['exit_rate'], 3)} | {_f(d['edge_rate'], 3)} | {d['sent']} | "
                f"{d['lost']} |"
            )
    return [*lines, ""]


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else "yes" if flag else "no"


def _plan(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "-"
    threshold = entry["threshold"]
    return f"cut {entry['cut']}" + ("" if threshold is None else f" t {threshold:g}")


def _change(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return (value - reference) / reference


def _pct(change: float | None) -> str:
    return "-" if change is None else f"{change * 100:+.1f}%"


def _mj(joules: float | None) -> float | None:
    return None if joules is None else joules * 1000


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
