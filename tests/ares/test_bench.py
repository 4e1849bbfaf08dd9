"""`ares bench`: its flags, and real benches of the tiny scenario end to end."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ares.bench_command import add_bench_parser, bench_options, parse_policies
from experiments.options import POLICIES
from experiments.plots import PLOT_FILES
from testbed.scenario import load_scenario

TINY = Path(__file__).with_name("data") / "tiny.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


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


def test_model_flag_replaces_the_scenarios_model(tmp_path):
    options = bench_options(
        parse("--scenario", "paper-testbed", "--out", str(tmp_path), "--model", "mobilenetv2")
    )
    assert options.scenario.model == "mobilenetv2"
    assert options.scenario.name == "paper-testbed"
    user = bench_options(
        parse("--scenario", str(TINY), "--out", "x", "--model", "tests.user_models:pixel_net")
    )
    assert user.scenario.model == "tests.user_models:pixel_net"
    with pytest.raises(ValueError, match="--model: unknown model 'nope'"):
        bench_options(parse("--scenario", str(TINY), "--out", "x", "--model", "nope"))


def test_partition_flag_replaces_the_scenarios(tmp_path, capsys):
    options = bench_options(
        parse("--scenario", str(TINY), "--out", "x", "--partition", "dirichlet:0.3")
    )
    assert options.scenario.partition == "dirichlet:0.3"
    assert bench_options(parse("--scenario", str(TINY), "--out", "x")).scenario.partition == "iid"
    with pytest.raises(SystemExit):
        parse("--scenario", str(TINY), "--out", "x", "--partition", "dirichlet:-1")
    assert "--partition" in capsys.readouterr().err


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
