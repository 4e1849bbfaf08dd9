"""What one run of a policy measured: its report checked, its metrics, changes between runs.

Pure functions on the edge's run reports (``schemas.report.RunReport``): no I/O, no clock, so
every number here can be checked on hand-made reports.

Definitions (summary.md repeats them for the reader):

- **training time**: the sum of the rounds' ``duration_s`` (plan, train, aggregate; a round's
  evaluation runs behind the next round, in reports before that it is included);
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
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from schemas.documents import validation_problems
from schemas.errors import AresError
from schemas.report import RunReport

__all__ = [
    "TARGET_FRACTION",
    "BenchReportError",
    "PolicyMetrics",
    "RunData",
    "default_target",
    "describe_change",
    "measured_objective",
    "num",
    "parse_report",
    "policy_metrics",
    "relative_change",
    "time_to_target",
]

TARGET_FRACTION = 0.9  # of the way from the initial accuracy to the lowest final accuracy


class BenchReportError(AresError, ValueError):
    """A run report that lacks what the bench needs; says which policy and which field."""


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
    formats: str = "-"  # the wire formats used, e.g. "float32" or "int4 4, float32 1"

    @property
    def energy_total_j(self) -> float:
        return sum(self.energy_j.values())

    @property
    def time_ratio(self) -> float | None:
        """Measured over predicted round times, summed (None without a prediction).

        The measured rounds also hold planning and aggregation, which the cost model leaves
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
        formats=_formats(run),
    )


def _formats(run: RunData) -> str:
    """The wire formats a run's split batches used, by device-rounds: "int8" or "int4 20,
    float32 4" (rounds the edge served no batch of, as at cut L, do not count; "-": none)."""
    counts: dict[str, int] = {}
    for entry in run.report.rounds:
        for device in entry.devices.values():
            if device.server_s > 0 and device.wire_dtype:
                counts[device.wire_dtype] = counts.get(device.wire_dtype, 0) + 1
    if len(counts) <= 1:
        return next(iter(counts), "-")
    return ", ".join(f"{f} {n}" for f, n in sorted(counts.items(), key=lambda item: -item[1]))


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


def num(value: float) -> str:
    """Seconds or joules for people: whole from 100, one decimal from 1, else 3 digits."""
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.3g}"
