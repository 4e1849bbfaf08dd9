"""What ``ares bench`` measured: metrics per policy, the comparison, results.json and summary.md.

Pure functions on the edge's run reports (``schemas.report.RunReport``): no I/O, no clock, so
every number here can be checked on hand-made reports.

Definitions (summary.md repeats them for the reader):

- **training time**: the sum of the rounds' ``duration_s`` (plan, train, aggregate, evaluate);
  registration and start-up are left out, they are the same whatever the policy.
- **time to target**: training time until the end of the first round whose accuracy reaches the
  target (0 when the initial model already does). The default target lies 90% of the way from
  the initial accuracy to the lowest final accuracy of all policies (:func:`default_target`), so
  every policy reaches it and it still means "trained".
- **device energy**: the report's ``energy_j`` summed over rounds: the cost model's accounting of
  the measured compute, send and receive times with each board's power figures.
- **measured objective**: ``alpha * T / T_ref + (1 - alpha) * E / E_ref`` with T the training time
  and E the devices' total energy. As in :mod:`planner.objective` the reference is federated
  learning, here fl's *measured* T and E in the same bench (fl scores 1.0, lower is better); without
  an fl run, the first policy run. Battery weights are left out: energy counts as measured.
- **device round time** (plots): ``round_s``, measured at the edge from sending the device its
  round start to holding its uploaded part. Reports from before that field existed fall back to
  ``busy_s + batches * rtt_median_s``, the device's compute plus its batches' round trips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from planner.policies import POLICIES
from schemas.documents import validation_problems
from schemas.errors import AresError
from schemas.report import TIE, RunReport

__all__ = [
    "TARGET_FRACTION",
    "BenchReportError",
    "PolicyMetrics",
    "RunData",
    "default_target",
    "describe_change",
    "final_table",
    "measured_objective",
    "parse_report",
    "policy_metrics",
    "relative_change",
    "render_summary",
    "same_cuts",
    "summarise",
    "time_to_target",
]

TARGET_FRACTION = 0.9  # of the way from the initial accuracy to the lowest final accuracy
# Emulation lag above this share of the training time (and this many seconds) is worth a mention.
BEHIND_SHARE = 0.02
BEHIND_FLOOR_S = 0.5
# ARES's measured / predicted round time off from another policy's by more than this (relative)
# is a misprediction worth naming.
MISPREDICTION = 0.25


class BenchReportError(AresError, ValueError):
    """A run report that lacks what the bench needs; says which policy and which field."""


# --- parsed reports ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunData:
    """One policy's run: its report under the bench's name for the run."""

    policy: str  # the bench's name: sl-best and sl-first are both the edge's "sl"
    report: RunReport

    @property
    def final_accuracy(self) -> float:
        """The report's, else its last round's (parse_report makes sure there is one)."""
        if self.report.final_accuracy is not None:
            return self.report.final_accuracy
        return self.report.rounds[-1].accuracy


def parse_report(name: str, report: Mapping[str, Any]) -> RunData:
    """Check and convert one run report; BenchReportError names what is missing or wrong."""
    try:
        parsed = RunReport.model_validate(report)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise BenchReportError(f"policy {name}: malformed report: {problems}") from None
    if parsed.final_accuracy is None and not parsed.rounds:
        raise BenchReportError(f"policy {name}: the report has no final accuracy and no rounds")
    return RunData(policy=name, report=parsed)


# --- metrics of one run -----------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyMetrics:
    """What one policy's run measured (see the module docstring for the definitions)."""

    name: str
    rounds: int
    train_time_s: float
    edge_wall_s: float  # the edge's whole run: registration, profiling, rounds
    wall_s: float | None  # the bench's wall time for the run, processes started to stopped
    time_to_target_s: float | None
    rounds_to_target: int | None  # 0: the initial model already reached the target
    energy_j: dict[str, float]  # per device, over all rounds
    final_accuracy: float
    predicted_time_s: float  # sum over rounds of the plan's round time
    planned_objective: float | None  # mean of the plans' objectives (each on its run's scale)
    emulation_behind_s: float  # summed over rounds and devices
    stragglers: int  # device-rounds closed at the deadline (straggler or late)
    dropped: int  # device-rounds that left early (dropped or aborted)
    splits: str  # the cuts used, e.g. "7", "3" or "1-5 (varies)"

    @property
    def energy_total_j(self) -> float:
        return sum(self.energy_j.values())

    @property
    def time_ratio(self) -> float | None:
        """Measured over predicted round times, summed (None without a prediction).

        The measured rounds also hold aggregation and evaluation, which the cost model leaves
        out and which cost the same at every cut: compare ratios between policies, not with 1.
        """
        return self.train_time_s / self.predicted_time_s if self.predicted_time_s > 0 else None


def time_to_target(run: RunData, target: float) -> tuple[float, int] | None:
    """(training seconds, rounds) until the accuracy first reaches ``target``; None if never."""
    if run.report.initial_accuracy is not None and run.report.initial_accuracy >= target:
        return 0.0, 0
    elapsed = 0.0
    for index, entry in enumerate(run.report.rounds, start=1):
        elapsed += entry.duration_s
        if entry.accuracy >= target:
            return elapsed, index
    return None


def default_target(runs: Sequence[RunData], fraction: float = TARGET_FRACTION) -> float:
    """``fraction`` of the way from the initial accuracy to the lowest final accuracy.

    Every policy reaches it: each ends at or above the lowest final accuracy. Where no policy
    improved on the initial model, the lowest final accuracy itself.
    """
    if not runs:
        raise BenchReportError("no runs to take a target accuracy from")
    if not 0.0 < fraction <= 1.0:
        raise BenchReportError(f"the target fraction must lie in (0, 1], got {fraction}")
    lowest = min(run.final_accuracy for run in runs)
    initials = [r.report.initial_accuracy for r in runs if r.report.initial_accuracy is not None]
    initial = max(initials, default=None)
    if initial is None or lowest <= initial:
        return lowest
    return initial + fraction * (lowest - initial)


def policy_metrics(run: RunData, target: float, wall_s: float | None = None) -> PolicyMetrics:
    rounds = run.report.rounds
    energy: dict[str, float] = {}
    for entry in rounds:
        for device_id, device in entry.devices.items():
            energy[device_id] = energy.get(device_id, 0.0) + device.energy_j
    reached = time_to_target(run, target)
    statuses = [d.status for r in rounds for d in r.devices.values()]
    return PolicyMetrics(
        name=run.policy,
        rounds=len(rounds),
        train_time_s=sum(r.duration_s for r in rounds),
        edge_wall_s=run.report.wall_s,
        wall_s=wall_s,
        time_to_target_s=None if reached is None else reached[0],
        rounds_to_target=None if reached is None else reached[1],
        energy_j=dict(sorted(energy.items())),
        final_accuracy=run.final_accuracy,
        predicted_time_s=sum(r.predicted_time_s for r in rounds),
        planned_objective=(sum(r.objective for r in rounds) / len(rounds) if rounds else None),
        emulation_behind_s=sum(d.emulation_behind_s for r in rounds for d in r.devices.values()),
        stragglers=statuses.count("straggler") + statuses.count("late"),
        dropped=statuses.count("dropped") + statuses.count("aborted"),
        splits=_splits(run),
    )


def _splits(run: RunData) -> str:
    """The cuts a run used: "3" (one for all), "4-7 per device" or "2-7 changing"."""
    per_device: dict[str, set[int]] = {}
    for entry in run.report.rounds:
        for device_id, device in entry.devices.items():
            if device.status != "dropped":
                per_device.setdefault(device_id, set()).add(device.cut)
    cuts = sorted(set().union(*per_device.values())) if per_device else []
    if not cuts:
        return "-"
    if len(cuts) == 1:
        return str(cuts[0])
    changing = any(len(device_cuts) > 1 for device_cuts in per_device.values())
    return f"{cuts[0]}-{cuts[-1]} {'changing' if changing else 'per device'}"


def measured_objective(
    time_s: float, energy_j: float, ref_time_s: float, ref_energy_j: float, alpha: float
) -> float:
    """alpha * T / T_ref + (1 - alpha) * E / E_ref; a zero reference term counts raw units."""
    if not 0.0 <= alpha <= 1.0:
        raise BenchReportError(f"alpha must lie in [0, 1], got {alpha}")
    t_ref = ref_time_s if ref_time_s > 0 else 1.0
    e_ref = ref_energy_j if ref_energy_j > 0 else 1.0
    return alpha * time_s / t_ref + (1.0 - alpha) * energy_j / e_ref


def relative_change(value: float, baseline: float) -> float | None:
    """(value - baseline) / baseline: -0.25 is 25% below the baseline; None for a zero baseline."""
    if baseline == 0:
        return None
    return (value - baseline) / baseline


def describe_change(change: float | None, less: str, more: str) -> str:
    """-0.234 -> "23.4% shorter" (``less``), 0.05 -> "5.0% longer" (``more``)."""
    if change is None:
        return "n/a"
    if abs(change) < 0.0005:
        return "the same"
    return f"{abs(change) * 100:.1f}% {less if change < 0 else more}"


# --- the comparison ---------------------------------------------------------------------------


def summarise(
    reports: Mapping[str, Mapping[str, Any]],
    alpha: float,
    *,
    target_accuracy: float | None = None,
    walls: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Metrics of every policy, the objective on one scale, ARES against the others, findings.

    ``reports``: policy name -> the edge's run report, in the order they ran.
    """
    if not reports:
        raise BenchReportError("no policy finished: nothing to compare")
    runs = {name: parse_report(name, report) for name, report in reports.items()}
    if target_accuracy is None:
        target = default_target(list(runs.values()))
        rule = (
            f"default: {TARGET_FRACTION:.0%} of the way from the initial accuracy to the lowest "
            "final accuracy of all policies"
        )
    else:
        target, rule = target_accuracy, "--target-accuracy"
    metrics = {
        name: policy_metrics(run, target, (walls or {}).get(name)) for name, run in runs.items()
    }
    reference = "fl" if "fl" in metrics else next(iter(metrics))
    ref = metrics[reference]
    objective = {
        name: measured_objective(
            m.train_time_s, m.energy_total_j, ref.train_time_s, ref.energy_total_j, alpha
        )
        for name, m in metrics.items()
    }
    best = min(objective, key=lambda name: objective[name])
    summary: dict[str, Any] = {
        "alpha": alpha,
        "target_accuracy": target,
        "target_rule": rule,
        "reference": reference,
        "reference_time_s": ref.train_time_s,
        "reference_energy_j": ref.energy_total_j,
        "best_objective": best,
        "policies": {
            name: {
                **asdict(m),
                "energy_total_j": m.energy_total_j,
                "objective": objective[name],
                "time_ratio": m.time_ratio,
            }
            for name, m in metrics.items()
        },
        "ares_vs": _ares_against(metrics) if "ares" in metrics else {},
        "findings": _findings(metrics, objective, runs, alpha),
    }
    return summary


def _ares_against(metrics: Mapping[str, PolicyMetrics]) -> dict[str, dict[str, float | None]]:
    ares = metrics["ares"]
    return {
        name: {
            "time": relative_change(ares.train_time_s, other.train_time_s),
            "energy": relative_change(ares.energy_total_j, other.energy_total_j),
            "time_to_target": (
                None
                if ares.time_to_target_s is None or other.time_to_target_s is None
                else relative_change(ares.time_to_target_s, other.time_to_target_s)
            ),
        }
        for name, other in metrics.items()
        if name != "ares"
    }


def _findings(
    metrics: Mapping[str, PolicyMetrics],
    objective: Mapping[str, float],
    runs: Mapping[str, RunData],
    alpha: float,
) -> list[str]:
    """Plain statements: is ARES best on its own objective, and if not, the likely reasons."""
    if "ares" not in metrics:
        return ["ARES was not run, so there is nothing to say about it."]
    mine = objective["ares"]
    better = sorted(
        (name for name in objective if name != "ares" and objective[name] < mine * (1 - TIE)),
        key=lambda name: objective[name],
    )
    ties = [
        n
        for n in objective
        if n != "ares" and n not in better and abs(objective[n] - mine) <= TIE * mine
    ]
    if not better:
        # A policy within 1% below ARES is a tie, not a loss; but then ARES is not "the best".
        lowest = all(objective[n] >= mine for n in ties)
        verb = "has the best" if lowest else "ties for the best"
        found = [f"ARES {verb} measured objective ({mine:.3f} at alpha {alpha:g})."]
        if ties:
            found.append(
                "Within 1% of it, so a tie on a shared machine: "
                + ", ".join(f"{n} ({objective[n]:.3f})" for n in ties)
                + "."
            )
        return found + _caveats(metrics)
    found = [
        f"ARES does NOT have the best measured objective: {mine:.3f} against "
        + ", ".join(f"{n} {objective[n]:.3f}" for n in better)
        + f" (alpha {alpha:g}, lower is better)."
    ]
    ares = metrics["ares"]
    for name in better:
        other = metrics[name]
        time = describe_change(relative_change(ares.train_time_s, other.train_time_s),
                               "shorter", "longer")  # fmt: skip
        energy = describe_change(
            relative_change(ares.energy_total_j, other.energy_total_j), "less", "more"
        )
        found.append(f"Against {name}, ARES's training time was {time} and its device energy "
                     f"{energy}.")  # fmt: skip
    found += _reasons(ares, [metrics[n] for n in better], runs)
    return found + _caveats(metrics, skip="ares")


def _behind(m: PolicyMetrics) -> bool:
    """Whether the host fell behind the emulated boards by enough to matter."""
    return m.emulation_behind_s > max(BEHIND_SHARE * m.train_time_s, BEHIND_FLOOR_S)


def _caveats(metrics: Mapping[str, PolicyMetrics], skip: str = "") -> list[str]:
    """Runs whose measured times are partly this host's rather than the emulated boards'."""
    return [
        f"Caveat: in the {m.name} run the host fell behind the emulated boards by "
        f"{num(m.emulation_behind_s)} s (summed over devices; training took "
        f"{num(m.train_time_s)} s): its times are partly this machine's."
        for m in metrics.values()
        if m.name != skip and _behind(m)
    ]


def _reasons(
    ares: PolicyMetrics, winners: list[PolicyMetrics], runs: Mapping[str, RunData]
) -> list[str]:
    reasons: list[str] = []
    run = runs["ares"]
    # Where the winner trained the very same cuts, no plan was better: only the measurement.
    alike = [w for w in winners if same_cuts(run, runs[w.name])]
    for winner in alike:
        reasons.append(
            f"ARES and {winner.name} used the same cut for every device in every round, so the "
            "difference is not the plan: it is measurement noise (this machine's load, see the "
            "load average above) or a cost outside the plan."
        )
    if _behind(ares):
        reasons.append(
            f"Likely reason: the host fell behind the emulated boards by "
            f"{num(ares.emulation_behind_s)} s in ARES's run (summed over devices; its training "
            f"took {num(ares.train_time_s)} s), so the measured times are partly this machine's, "
            "not the boards' the planner assumed."
        )
    reasons += [
        text
        for winner in winners
        if winner not in alike and (text := _misprediction(ares, winner, run))
    ]
    if ares.stragglers or ares.dropped:
        reasons.append(
            f"ARES's run had {ares.stragglers} straggling and {ares.dropped} dropped "
            "device-rounds, which cost time or lost work."
        )
    if not reasons:
        reasons.append(
            "No emulation lag, stragglers or large misprediction were found in ARES's run: the "
            "difference may be run-to-run noise on a shared machine, or per-round costs the cost "
            "model leaves out (start-up of a round, aggregation, evaluation)."
        )
    return reasons


def same_cuts(first: RunData, second: RunData) -> bool:
    """Whether two runs trained the same rounds with the same cut for every device."""
    if len(first.report.rounds) != len(second.report.rounds):
        return False
    return all(
        {d: v.cut for d, v in a.devices.items()} == {d: v.cut for d, v in b.devices.items()}
        for a, b in zip(first.report.rounds, second.report.rounds, strict=True)
    )


def _misprediction(ares: PolicyMetrics, winner: PolicyMetrics, run: RunData) -> str | None:
    """A sentence when the cost model was off for ARES's cuts much more (or less) than for the
    winner's: the planner compares cuts at predicted costs, so that is where it went wrong."""
    mine, theirs = ares.time_ratio, winner.time_ratio
    if mine is None or theirs is None or theirs <= 0:
        return None
    if mine / theirs <= 1 + MISPREDICTION:
        return None
    return (
        f"Likely reason: a misprediction. ARES's rounds took {mine:.2f}x their predicted time, "
        f"{winner.name}'s {theirs:.2f}x: against {winner.name}'s, the cost model under-estimated "
        f"ARES's cuts (or over-estimated {winner.name}'s), and the planner compares cuts at "
        "predicted costs; " + _worst_round(run)
    )


def _worst_round(run: RunData) -> str:
    worst = max(
        (r for r in run.report.rounds if r.predicted_time_s > 0),
        key=lambda r: r.duration_s / r.predicted_time_s,
        default=None,
    )
    if worst is None:
        return "no round had a prediction."
    return (
        f"the worst was round {worst.round}: {num(worst.duration_s)} s against "
        f"{num(worst.predicted_time_s)} s predicted."
    )


# --- output -----------------------------------------------------------------------------------


def num(value: float) -> str:
    """Seconds or joules for people: whole from 100, one decimal from 1, else 3 digits."""
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.3g}"


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
        f"{'policy':<{width}} {'cuts':>14} {'accuracy':>9} {'train s':>9} {'to target s':>12} "
        f"{'energy J':>10} {'objective':>10}"
    )
    lines = [header, "-" * len(header)]
    for name, p in policies.items():
        mark = "  <- best" if name == summary["best_objective"] else ""
        lines.append(
            f"{name:<{width}} {p['splits']:>14} {p['final_accuracy']:>9.4f} "
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
        f"on the same scenario, seed ({settings['seed']}) and data shards, each with its own "
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
                notes.append(f"  The cost model's objectives before the runs: {priced}.")
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
    header = "| policy | cuts | final accuracy | training time s | wall s | time to target s "
    header += "| device energy J | objective |"
    for name in baselines:
        header += f" time vs {name} | energy vs {name} |"
    lines = ["## Results", "", header, "| --- | --- |" + " ---: |" * (6 + 2 * len(baselines))]
    for name, p in policies.items():
        best = " **(best)**" if name == summary["best_objective"] else ""
        wall = "-" if p["wall_s"] is None else num(p["wall_s"])
        row = (
            f"| {name}{best} | {p['splits']} | {p['final_accuracy']:.4f} | "
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
        "- training time: the sum of the rounds' durations at the edge (plan, train, aggregate, "
        "evaluate); wall: the whole run, processes started to stopped.",
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
        "measured rounds also hold aggregation and evaluation, which the cost model leaves out "
        "and which cost the same whatever the cuts, so compare measured / predicted between "
        "policies rather than with 1.",
        "- device round time (round_times.png): measured at the edge, from sending the device "
        "its round start (with its part's weights) to holding its uploaded part; a device that "
        "handed in nothing shows its estimate, compute plus its batches' median round trips.",
        "- emulation behind: seconds the host overran the emulated boards' compute times, summed "
        "over devices and rounds (0: the emulation kept up).",
        "",
    ]
