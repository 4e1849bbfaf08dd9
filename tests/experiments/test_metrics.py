"""What one run measured, on hand-made reports."""

from __future__ import annotations

import pytest

from experiments.metrics import (
    BenchReportError,
    default_target,
    describe_change,
    measured_objective,
    parse_report,
    policy_metrics,
    relative_change,
    time_to_target,
)
from tests.experiments.handmade import device, report, three_policies


def test_device_round_time_is_the_edge_measurement_else_an_estimate():
    measured = {"pi": {**device(busy=1.0, batches=2, rtt=0.5), "round_s": 3.5}}
    old = {"pi": device(busy=1.0, batches=2, rtt=0.5)}  # a report from before round_s
    run = parse_report("x", report("x", [(0.5, 4.0, measured), (0.6, 4.0, old)]))
    assert [r.devices["pi"].time_s for r in run.report.rounds] == [3.5, 2.0]


def test_time_to_target_counts_durations_up_to_the_first_round_that_reaches_it():
    run = parse_report("x", report("x", [(0.3, 10, {}), (0.6, 20, {}), (0.8, 30, {})]))
    assert time_to_target(run, 0.6) == (30.0, 2)
    assert time_to_target(run, 0.3) == (10.0, 1)
    assert time_to_target(run, 0.81) is None
    assert time_to_target(run, 0.05) == (0.0, 0)  # the initial model is already there


def test_default_target_lies_between_the_initial_and_the_lowest_final_accuracy():
    runs = [parse_report(n, r) for n, r in three_policies().items()]
    # Initial 0.1, lowest final 0.7 (ares): 0.1 + 0.9 * 0.6.
    assert default_target(runs) == pytest.approx(0.64)
    assert all(time_to_target(run, default_target(runs)) is not None for run in runs)
    flat = [parse_report("x", report("x", [(0.05, 1.0, {})], initial=0.1))]
    assert default_target(flat) == pytest.approx(0.05)  # no progress: the final accuracy


def test_policy_metrics_sum_times_and_energy_and_count_statuses():
    runs = three_policies()
    m = policy_metrics(parse_report("sl-best", runs["sl-best"]), target=0.5, wall_s=99.0)
    assert m.train_time_s == 80.0
    assert m.energy_j == {"a": 30.0, "b": 15.0}
    assert m.energy_total_j == 45.0
    assert (m.time_to_target_s, m.rounds_to_target) == (80.0, 2)
    assert m.final_accuracy == 0.9
    assert (m.stragglers, m.dropped) == (1, 0)
    assert m.splits == "2"
    assert m.wall_s == 99.0
    # 80 s measured against 2 x 2 s predicted (the slowest device per round).
    assert m.predicted_time_s == pytest.approx(4.0)
    assert m.time_ratio == pytest.approx(20.0)
    assert policy_metrics(parse_report("ares", runs["ares"]), 0.5).splits == "1-3 changing"
    ares = runs["ares"]
    ares["rounds"][1]["devices"]["a"]["cut"] = 2
    assert policy_metrics(parse_report("ares", ares), 0.5).splits == "2-3 per device"


def test_measured_objective_is_one_for_the_reference_and_weighs_by_alpha():
    assert measured_objective(100, 60, 100, 60, alpha=0.3) == pytest.approx(1.0)
    assert measured_objective(50, 30, 100, 60, alpha=0.5) == pytest.approx(0.5)
    assert measured_objective(50, 60, 100, 60, alpha=1.0) == pytest.approx(0.5)
    assert measured_objective(50, 60, 100, 60, alpha=0.0) == pytest.approx(1.0)
    with pytest.raises(BenchReportError, match="alpha"):
        measured_objective(1, 1, 1, 1, alpha=1.5)


def test_changes_read_as_shorter_or_longer():
    assert relative_change(77.0, 100.0) == pytest.approx(-0.23)
    assert describe_change(-0.234, "shorter", "longer") == "23.4% shorter"
    assert describe_change(0.05, "less", "more") == "5.0% more"
    assert describe_change(None, "less", "more") == "n/a"
    assert relative_change(1.0, 0.0) is None


def test_an_incomplete_report_is_a_clear_error():
    with pytest.raises(BenchReportError, match="policy fl: malformed report: policy: Field requ"):
        parse_report("fl", {"final_accuracy": 0.5})
    with pytest.raises(BenchReportError, match="policy fl: the report has no final accuracy"):
        parse_report("fl", {**report("fl", []), "final_accuracy": None})
