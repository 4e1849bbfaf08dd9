"""The comparison of the policies' runs: the objective on one scale, ARES against the others,
and plain findings (is ARES best on its own objective; if not, the likely reasons).

Pure functions on the edge's run reports; the definitions are :mod:`experiments.metrics`'.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from experiments.metrics import (
    TARGET_FRACTION,
    BenchReportError,
    PolicyMetrics,
    RunData,
    default_target,
    describe_change,
    measured_objective,
    num,
    parse_report,
    policy_metrics,
    relative_change,
)
from schemas.report import TIE

__all__ = ["same_cuts", "summarise"]

# Emulation lag above this share of the training time (and this many seconds) is worth a mention.
BEHIND_SHARE = 0.02
BEHIND_FLOOR_S = 0.5
# ARES's measured / predicted round time off from another policy's by more than this (relative)
# is a misprediction worth naming.
MISPREDICTION = 0.25


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
            "model leaves out (start-up of a round, aggregation)."
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
