"""The comparison for people: summary.md and the terminal's table, from a results.json document
(its ``summary`` computed by :func:`experiments.comparison.summarise`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from experiments.metrics import describe_change, num, relative_change
from planner.policies import POLICIES

__all__ = ["final_table", "render_summary"]


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else num(value)


def _percent(change: float | None) -> str:
    return "n/a" if change is None else f"{change * 100:+.1f}%"


def _sl_name(summary: Mapping[str, Any]) -> str | None:
    policies = summary["policies"]
    return next((n for n in ("sl-best", "sl-first") if n in policies), None)


def final_table(summary: Mapping[str, Any]) -> str:
    """The comparison as plain text for the terminal."""
    policies: Mapping[str, Mapping[str, Any]] = summary["policies"]
    width = max(8, *(len(n) for n in policies))
    header = (
        f"{'policy':<{width}} {'cuts':>14} {'wire':>16} {'accuracy':>9} {'train s':>9} "
        f"{'to target s':>12} "
        f"{'energy J':>10} {'objective':>10}"
    )
    lines = [header, "-" * len(header)]
    for name, p in policies.items():
        mark = "  <- best" if name == summary["best_objective"] else ""
        lines.append(
            f"{name:<{width}} {p['splits']:>14} {p.get('formats', '-'):>16} "
            f"{p['final_accuracy']:>9.4f} "
            f"{num(p['train_time_s']):>9} {_seconds(p['time_to_target_s']):>12} "
            f"{num(p['energy_total_j']):>10} {p['objective']:>10.3f}{mark}"
        )
    lines.append(
        f"objective: alpha {summary['alpha']:g} * T/T_ref + (1 - alpha) * E/E_ref, reference "
        f"{summary['reference']} (lower is better); target accuracy "
        f"{summary['target_accuracy']:.4f}"
    )
    return "\n".join(lines)


def render_summary(results: Mapping[str, Any]) -> str:
    """summary.md from a results.json document (``summary`` computed by :func:`summarise`)."""
    summary: Mapping[str, Any] = results["summary"]
    settings: Mapping[str, Any] = results["settings"]
    machine: Mapping[str, Any] = results["machine"]
    policies: Mapping[str, Mapping[str, Any]] = summary["policies"]
    scenario = results["scenario"]
    lines = [
        f"# ares bench: {scenario['name']}",
        "",
        f"{scenario.get('description', '').strip()}".strip(),
        "",
        f"Machine: {machine.get('cpus')} CPUs, Python {machine.get('python')}, torch "
        f"{machine.get('torch')}, {machine.get('platform')}; load average "
        f"{_load(machine.get('load_average_start'))} at the start, "
        f"{_load(machine.get('load_average_end'))} at the end. Policies ran one after another "
        f"on the same scenario, seed ({settings['seed']}) and data shards (partition "
        f"{settings.get('partition', 'iid')}), each with its own "
        f"broker; {settings['rounds']} rounds, alpha {settings['alpha']:g}, links shaped by "
        f"{settings.get('link_mode', 'unknown')}.",
        "",
    ]
    lines += _policy_notes(settings)
    lines += _results_table(summary, policies)
    lines += _energy_table(policies)
    lines += _ares_section(summary)
    lines += ["## Findings", "", *(f"- {f}" for f in summary["findings"]), ""]
    if failed := results.get("failed"):
        lines += ["## Failed runs", ""]
        lines += [f"- {name}: {problem}" for name, problem in failed.items()]
        lines.append("")
    lines += _details_table(policies)
    lines += _definitions(summary)
    return "\n".join(lines)


def _load(values: Sequence[float] | None) -> str:
    return "unknown" if not values else " / ".join(f"{v:.2f}" for v in values)


def _policy_notes(settings: Mapping[str, Any]) -> list[str]:
    notes = ["Policies:", ""]
    described = {name: f"{name}: {summary}." for name, summary in POLICIES.summaries().items()}
    described["sl-first"] = "sl-first: classic split learning at cut 1 for every device."
    for name in settings["policies"]:
        if name == "sl-best":
            choice = settings.get("sl_best", {})
            same = " (the same cut as sl-first)" if choice.get("cut") == 1 else ""
            notes.append(f"- sl-best: classic split learning at cut {choice.get('cut')} for every "
                         f"device{same}; {choice.get('how', '')}.")  # fmt: skip
            if predicted := choice.get("predicted"):
                priced = ", ".join(
                    f"{key} {'infeasible' if value is None else f'{value:.3f}'}"
                    for key, value in predicted.items()
                )
                notes.append(f"  The cost model's objectives before the runs: {priced} (every "
                             "wire float32: ares may choose a narrower format only once the edge "
                             "has measured its accuracy cost).")  # fmt: skip
        elif name in described:
            notes.append(f"- {described[name]}")
    return [*notes, ""]


def _results_table(
    summary: Mapping[str, Any], policies: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    # Ratio columns against the baselines that ran: fl, and sl-best (else sl-first).
    baselines = [
        name for name in ("fl", _sl_name(summary)) if name is not None and name in policies
    ]
    header = (
        "| policy | cuts | wire | final accuracy | training time s | wall s | time to target s "
    )
    header += "| device energy J | objective |"
    for name in baselines:
        header += f" time vs {name} | energy vs {name} |"
    lines = ["## Results", "", header, "| --- | --- | --- |" + " ---: |" * (6 + 2 * len(baselines))]
    for name, p in policies.items():
        best = " **(best)**" if name == summary["best_objective"] else ""
        wall = "-" if p["wall_s"] is None else num(p["wall_s"])
        row = (
            f"| {name}{best} | {p['splits']} | {p.get('formats', '-')} | "
            f"{p['final_accuracy']:.4f} | "
            f"{num(p['train_time_s'])} | {wall} | {_seconds(p['time_to_target_s'])} | "
            f"{num(p['energy_total_j'])} | {p['objective']:.3f} |"
        )
        for baseline in baselines:
            other = policies[baseline]
            for key in ("train_time_s", "energy_total_j"):
                row += f" {_percent(relative_change(p[key], other[key]))} |"
        lines.append(row)
    return [*lines, ""]


def _energy_table(policies: Mapping[str, Mapping[str, Any]]) -> list[str]:
    devices = sorted({d for p in policies.values() for d in p["energy_j"]})
    names = list(policies)
    lines = [
        "## Device energy, J (all rounds)",
        "",
        "| device | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for device in devices:
        cells = [
            f"{num(policies[n]['energy_j'][device])}" if device in policies[n]["energy_j"] else "-"
            for n in names
        ]
        lines.append(f"| {device} | " + " | ".join(cells) + " |")
    totals = [f"**{num(policies[n]['energy_total_j'])}**" for n in names]
    lines.append("| **total** | " + " | ".join(totals) + " |")
    return [*lines, ""]


def _ares_section(summary: Mapping[str, Any]) -> list[str]:
    against: Mapping[str, Mapping[str, float | None]] = summary["ares_vs"]
    if not against:
        return []
    lines = ["## ARES against the others", ""]
    for name, change in against.items():
        time = describe_change(change["time"], "shorter", "longer")
        energy = describe_change(change["energy"], "less", "more")
        to_target = describe_change(change["time_to_target"], "shorter", "longer")
        lines.append(
            f"- against {name}: training time {time}, device energy {energy}, "
            f"time to target {to_target}"
        )
    return [*lines, ""]


def _details_table(policies: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [
        "## Per policy: prediction against measurement",
        "",
        "| policy | rounds | rounds to target | predicted round time s | measured round time s "
        "| measured / predicted | planned objective | emulation behind s | stragglers | dropped "
        "| edge wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, p in policies.items():
        ratio = "-" if p["time_ratio"] is None else f"{p['time_ratio']:.2f}"
        reached = "-" if p["rounds_to_target"] is None else str(p["rounds_to_target"])
        planned = "-" if p["planned_objective"] is None else f"{p['planned_objective']:.3f}"
        lines.append(
            f"| {name} | {p['rounds']} | {reached} | {num(p['predicted_time_s'])} | "
            f"{num(p['train_time_s'])} | {ratio} | "
            f"{planned} | {num(p['emulation_behind_s'])} | {p['stragglers']} | "
            f"{p['dropped']} | {num(p['edge_wall_s'])} |"
        )
    return [*lines, ""]


def _definitions(summary: Mapping[str, Any]) -> list[str]:
    return [
        "## How the numbers are computed",
        "",
        "- training time: the sum of the rounds' durations at the edge (plan, train, aggregate; "
        "each round is evaluated behind the next); wall: the whole run, processes started to "
        "stopped.",
        f"- time to target: training time until the first round at accuracy "
        f"{summary['target_accuracy']:.4f} or above ({summary['target_rule']}).",
        "- device energy: the cost model's accounting of each device's measured compute, send "
        "and receive times with its board's power figures, summed over rounds; the weights "
        "that go down with each round start and back at its end count by their bytes over "
        "the device's link estimates (the report's weights_s), as the planner prices them.",
        f"- objective: alpha * T / T_ref + (1 - alpha) * E / E_ref with alpha "
        f"{summary['alpha']:g}, T the training time and E the total device energy; T_ref = "
        f"{num(summary['reference_time_s'])} s and E_ref = {num(summary['reference_energy_j'])} J "
        f"are {summary['reference']}'s, measured in this bench, so it scores 1.0; lower is "
        "better. Like the planner, the bench normalises by federated learning when fl ran, "
        "else by the first policy run.",
        "- planned objective: the mean of the edge's per-round plan objectives, each normalised "
        "by that run's own cost-model reference.",
        "- predicted round time: the plans' slowest predicted device per round, summed; the "
        "measured rounds also hold planning and aggregation, which the cost model leaves out "
        "and which cost the same whatever the cuts, so compare measured / predicted between "
        "policies rather than with 1.",
        "- device round time (round_times.png): measured at the edge, from sending the device "
        "its round start (with its part's weights) to holding its uploaded part; a device that "
        "handed in nothing shows its estimate, compute plus its batches' median round trips.",
        "- emulation behind: seconds the host overran the emulated boards' compute times, summed "
        "over devices and rounds (0: the emulation kept up).",
        "",
    ]
