"""`ares bench`: the metrics on hand-made reports, the plots, the options, and one real bench."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ares.bench_command import add_bench_parser, bench_options, parse_policies
from experiments.comparison import summarise
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
from experiments.options import POLICIES
from experiments.plots import PLOT_FILES, write_plots
from experiments.report import final_table, render_summary
from testbed.scenario import load_scenario

TINY = Path(__file__).with_name("data") / "tiny.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


# --- hand-made reports ------------------------------------------------------------------------


def device(
    cut: int = 3,
    energy: float = 1.0,
    *,
    status: str = "ok",
    busy: float = 1.0,
    batches: int = 2,
    rtt: float | None = 0.5,
    predicted: float = 2.0,
    behind: float = 0.0,
    uplink: float | None = 20.0,
) -> dict[str, Any]:
    return {
        "cut": cut, "predicted_time_s": predicted, "predicted_energy_j": energy,
        "status": status, "batches": batches, "samples": 32 * batches, "busy_s": busy,
        "server_s": 0.1, "train_loss": 1.0, "rtt_median_s": rtt, "energy_j": energy,
        "uplink_mbps": uplink, "downlink_mbps": uplink, "battery_pct": None, "link_mode": "tc",
        "emulation_behind_s": behind,
    }  # fmt: skip


def report(
    policy: str,
    rounds: list[tuple[float, float, dict[str, dict[str, Any]]]],
    initial: float | None = 0.1,
) -> dict[str, Any]:
    """rounds: (accuracy, duration_s, devices) per round."""
    return {
        "policy": policy,
        "alpha": 0.5,
        "model": "small_cnn",
        "dataset": "digits",
        "session": "s",
        "started_at": 0.0,
        "initial_accuracy": initial,
        "final_accuracy": rounds[-1][0] if rounds else None,
        "wall_s": sum(r[1] for r in rounds) + 5.0,
        "counters": {},
        "rounds": [
            {
                "round": i,
                "accuracy": acc,
                "loss": 1.0,
                "train_loss": 1.0,
                "duration_s": dur,
                "objective": 0.8,
                "devices": devices,
            }
            for i, (acc, dur, devices) in enumerate(rounds, start=1)
        ],
    }


def three_policies(ares_behind: float = 0.0) -> dict[str, dict[str, Any]]:
    """fl: 100 s, 60 J; ares: 60 s, 30 J (or worse, see the tests); sl-best: 80 s, 45 J."""
    fl = report("fl", [
        (0.5, 50.0, {"a": device(5, 20.0), "b": device(5, 10.0)}),
        (0.8, 50.0, {"a": device(5, 20.0), "b": device(5, 10.0)}),
    ])  # fmt: skip
    ares = report("ares", [
        (0.5, 30.0, {"a": device(2, 10.0, behind=ares_behind), "b": device(3, 5.0)}),
        (0.7, 30.0, {"a": device(1, 10.0), "b": device(3, 5.0)}),
    ])  # fmt: skip
    sl = report("sl", [
        (0.4, 40.0, {"a": device(2, 15.0), "b": device(2, 7.5, status="straggler")}),
        (0.9, 40.0, {"a": device(2, 15.0), "b": device(2, 7.5)}),
    ])  # fmt: skip
    return {"fl": fl, "ares": ares, "sl-best": sl}


# --- metrics ----------------------------------------------------------------------------------


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


def test_summary_normalises_by_fl_and_compares_ares():
    summary = summarise(three_policies(), alpha=0.5)
    policies = summary["policies"]
    assert summary["reference"] == "fl"
    assert policies["fl"]["objective"] == pytest.approx(1.0)
    # ares: 0.5 * 60/100 + 0.5 * 30/60; sl-best: 0.5 * 80/100 + 0.5 * 45/60.
    assert policies["ares"]["objective"] == pytest.approx(0.55)
    assert policies["sl-best"]["objective"] == pytest.approx(0.775)
    assert summary["best_objective"] == "ares"
    assert summary["ares_vs"]["fl"]["time"] == pytest.approx(-0.4)
    assert summary["ares_vs"]["fl"]["energy"] == pytest.approx(-0.5)
    assert summary["ares_vs"]["sl-best"]["time"] == pytest.approx(-0.25)
    assert summary["findings"][0].startswith("ARES has the best measured objective")
    assert summary["target_accuracy"] == pytest.approx(0.64)
    assert policies["ares"]["time_to_target_s"] == 60.0
    assert policies["fl"]["time_to_target_s"] == 100.0


def test_summary_without_fl_normalises_by_the_first_policy():
    runs = three_policies()
    summary = summarise({"sl-best": runs["sl-best"], "ares": runs["ares"]}, alpha=0.5)
    assert summary["reference"] == "sl-best"
    assert summary["policies"]["sl-best"]["objective"] == pytest.approx(1.0)


def test_findings_say_plainly_when_ares_loses_and_why():
    runs = three_policies(ares_behind=40.0)
    # Make ARES slower than fl: its rounds take 120 s each.
    for entry in runs["ares"]["rounds"]:
        entry["duration_s"] = 120.0
    summary = summarise(runs, alpha=0.5)
    findings = " ".join(summary["findings"])
    assert summary["best_objective"] != "ares"
    assert "ARES does NOT have the best measured objective" in findings
    assert "fell behind the emulated boards by 40.0 s" in findings


def test_findings_name_a_misprediction():
    runs = three_policies()
    runs["ares"]["rounds"][0]["duration_s"] = 200.0  # 100x the 2 s predicted; fl: 25x
    findings = " ".join(summarise(runs, alpha=0.5)["findings"])
    assert "ARES does NOT" in findings
    assert "the cost model under-estimated ARES's cuts (or over-estimated fl's)" in findings
    assert "the worst was round 1: 200 s against 2.0 s predicted" in findings
    assert "fell behind" not in findings


def test_no_misprediction_is_claimed_when_the_model_erred_alike():
    runs = three_policies()
    del runs["sl-best"]
    for entry in runs["ares"]["rounds"]:
        entry["duration_s"] = 55.0  # 27.5x its prediction against fl's 25x: within 25%
        for data in entry["devices"].values():
            data["energy_j"] = 30.0  # 120 J against fl's 60 J: ARES loses on energy
    findings = " ".join(summarise(runs, alpha=0.5)["findings"])
    assert "ARES does NOT" in findings
    assert "device energy 100.0% more" in findings
    assert "Likely reason: a misprediction" not in findings
    assert "No emulation lag, stragglers or large misprediction were found" in findings


def test_findings_put_a_loss_with_the_same_cuts_down_to_noise():
    runs = three_policies()
    runs["static"] = json.loads(json.dumps(runs["ares"]))  # the same cuts, faster rounds
    for entry in runs["static"]["rounds"]:
        entry["duration_s"] = 20.0
    findings = " ".join(summarise(runs, alpha=0.5)["findings"])
    assert "ARES does NOT have the best measured objective: 0.550 against static 0.450" in findings
    assert "ARES and static used the same cut for every device in every round" in findings
    assert "misprediction" not in findings.split("static used the same cut")[1]


@pytest.mark.parametrize(
    ("round_s", "lead"),
    [
        # 0.5 * 149/100 + 0.5 * 30/60 = 0.995 against fl's 1.0: a win by less than 1%, a tie.
        (74.5, "ARES has the best measured objective (0.995 at alpha 0.5)."),
        # 0.5 * 151/100 + 0.5 * 30/60 = 1.005: a loss by less than 1%, a tie but not the best.
        (75.5, "ARES ties for the best measured objective (1.005 at alpha 0.5)."),
    ],
)
def test_less_than_one_percent_either_way_is_a_tie(round_s: float, lead: str) -> None:
    runs = three_policies()
    del runs["sl-best"]
    for entry in runs["ares"]["rounds"]:
        entry["duration_s"] = round_s
    findings = summarise(runs, alpha=0.5)["findings"]
    assert findings[0] == lead
    assert findings[1] == "Within 1% of it, so a tie on a shared machine: fl (1.000)."


def test_an_explicit_target_is_used_as_given():
    summary = summarise(three_policies(), alpha=0.5, target_accuracy=0.85)
    assert summary["target_rule"] == "--target-accuracy"
    assert summary["policies"]["sl-best"]["time_to_target_s"] == 80.0
    assert summary["policies"]["ares"]["time_to_target_s"] is None


def test_an_incomplete_report_is_a_clear_error():
    with pytest.raises(BenchReportError, match="policy fl: malformed report: policy: Field requ"):
        parse_report("fl", {"final_accuracy": 0.5})
    with pytest.raises(BenchReportError, match="policy fl: the report has no final accuracy"):
        parse_report("fl", {**report("fl", []), "final_accuracy": None})
    with pytest.raises(BenchReportError, match="no policy finished"):
        summarise({}, alpha=0.5)


def results_document(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "scenario": {"name": "hand-made", "description": "two devices"},
        "machine": {"cpus": 2, "python": "3.11", "torch": "2", "platform": "Linux"},
        "settings": {
            "alpha": 0.5,
            "rounds": 2,
            "seed": 0,
            "policies": list(reports),
            "link_mode": "tc",
            "sl_best": {"cut": 2, "how": "by hand"},
        },
        "policies": reports,
        "failed": {},
        "summary": summarise(reports, alpha=0.5),
    }


def test_summary_markdown_has_the_tables_and_the_findings():
    text = render_summary(results_document(three_policies()))
    assert "| ares **(best)** | 1-3 changing | 0.7000 | 60.0 | - | 60.0 | 30.0 | 0.550 |" in text
    assert "-40.0% | -50.0% | -25.0% | -33.3% |" in text  # against fl, then sl-best
    assert "| a | 40.0 | 20.0 | 30.0 |" in text  # energy per device: fl, ares, sl-best
    assert "| **total** | **60.0** | **30.0** | **45.0** |" in text
    assert "against fl: training time 40.0% shorter, device energy 50.0% less" in text
    assert "sl-best: classic split learning at cut 2 for every device; by hand" in text
    assert "ARES has the best measured objective" in text
    table = final_table(results_document(three_policies())["summary"])
    assert "<- best" in table.splitlines()[3]  # ares, the second row below the header


# --- plots ------------------------------------------------------------------------------------


def test_plots_are_non_empty_pngs(tmp_path):
    written = write_plots(results_document(three_policies()), tmp_path)
    assert sorted(p.name for p in written) == sorted(PLOT_FILES)
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG), path
        assert len(data) > 5000, path


def test_without_an_adaptive_policy_there_is_no_split_plot(tmp_path):
    runs = three_policies()
    written = write_plots(results_document({"fl": runs["fl"]}), tmp_path)
    assert "splits.png" not in {p.name for p in written}
    assert len(written) == 3


# --- options ----------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def test_policies_are_checked():
    assert parse_policies("fl, ares") == ("fl", "ares")
    with pytest.raises(ValueError, match="unknown nope"):
        parse_policies("ares,nope")
    with pytest.raises(ValueError, match="each policy once"):
        parse_policies("ares,ares")


def test_options_from_flags(tmp_path):
    options = bench_options(parse("--scenario", str(TINY), "--out", str(tmp_path)))
    assert options.policies == POLICIES
    assert (options.effective_rounds, options.effective_alpha) == (2, 0.5)
    assert options.batches_per_round == 3
    quick = bench_options(
        parse("--scenario", "paper-testbed", "--out", str(tmp_path), "--quick", "--alpha", "1")
    )
    assert (quick.effective_rounds, quick.batches_per_round, quick.effective_alpha) == (2, 3, 1.0)
    with pytest.raises(ValueError, match="--alpha must lie in"):
        bench_options(parse("--scenario", str(TINY), "--out", "x", "--alpha", "2"))
    with pytest.raises(ValueError, match="--rounds must be at least 1"):
        bench_options(parse("--scenario", str(TINY), "--out", "x", "--rounds", "0"))


def test_the_tiny_scenario_loads():
    scenario = load_scenario(TINY)
    assert [d.id for d in scenario.devices] == ["nano", "pi"]


# --- end to end -------------------------------------------------------------------------------


def test_bench_runs_two_policies_and_writes_consistent_results(tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "ares", "bench", "--scenario", str(TINY), "--out", str(out),
         "--policies", "fl,ares", "--no-progress"],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    assert list(results["policies"]) == ["fl", "ares"]
    assert results["failed"] == {}
    assert results["settings"]["seed"] == 0
    assert results["settings"]["rounds"] == 2
    assert results["machine"]["cpus"] >= 1
    summary = results["summary"]
    assert summary["reference"] == "fl"
    assert summary["policies"]["fl"]["objective"] == pytest.approx(1.0)
    for name, run in results["policies"].items():
        assert run["policy"] == name
        assert [r["round"] for r in run["rounds"]] == [1, 2]
        assert all(set(r["devices"]) == {"nano", "pi"} for r in run["rounds"])
        for entry in run["rounds"]:  # measured at the edge, inside the round it belongs to
            for device in entry["devices"].values():
                assert 0 < device["round_s"] <= entry["duration_s"], (entry, device)
        measured = summary["policies"][name]
        assert measured["train_time_s"] == pytest.approx(
            sum(r["duration_s"] for r in run["rounds"])
        )
        assert measured["time_to_target_s"] is not None  # the default target is reachable
    fl_cuts = {d["cut"] for r in results["policies"]["fl"]["rounds"] for d in r["devices"].values()}
    assert len(fl_cuts) == 1  # every block on the device, every round
    text = (out / "summary.md").read_text()
    assert "| fl" in text
    assert "| ares" in text
    assert "## Findings" in text
    for name in PLOT_FILES:
        assert (out / name).read_bytes().startswith(PNG), name
    for policy in ("fl", "ares"):
        assert (out / "runs" / policy / "edge.log").exists()
        assert (out / "runs" / policy / "report.json").exists()
    assert "objective" in done.stdout  # the final table
    leftovers = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
    assert leftovers.stdout == ""


def test_a_failed_policy_run_fails_the_bench_and_says_where_its_logs_are(tmp_path):
    broken = tmp_path / "broken.yaml"
    # CIFAR-10 without a data directory: the edge cannot load its test set and exits.
    broken.write_text(TINY.read_text().replace("dataset: digits", "dataset: cifar10"))
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "ares", "bench", "--scenario", str(broken), "--out", str(out),
         "--policies", "fl", "--no-progress"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "fl failed" in done.stderr
    assert str(out / "runs" / "fl") in done.stderr
    results = json.loads((out / "results.json").read_text())
    assert list(results["failed"]) == ["fl"]
    assert "summary" not in results
