"""The bench with a stand-in for what starts the processes: what it asks each run for, and what it
writes and answers, without a broker, an edge or a device."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.launch import ScenarioRun
from experiments.options import BenchOptions
from experiments.runner import bench
from testbed.scenario import load_scenario
from tests.experiments.handmade import three_policies

TINY = Path(__file__).parents[1] / "ares" / "data" / "tiny.yaml"


@dataclass(frozen=True)
class Outcome:
    code: int
    wall_s: float
    run_dir: Path
    report: dict[str, Any] | None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 0 and self.report is not None


def test_each_policy_is_asked_for_once_and_compared(tmp_path):
    reports = three_policies()
    asked: list[ScenarioRun] = []

    def run_scenario(run: ScenarioRun) -> Outcome:
        asked.append(run)
        if run.label == "static":
            return Outcome(1, 1.0, run.run_dir, None, "the edge service failed (exit 1)")
        return Outcome(0, 2.0, run.run_dir, reports[run.label])

    options = BenchOptions(
        scenario=load_scenario(TINY), out=tmp_path, policies=("fl", "ares", "static"), seed=3
    )
    assert bench(options, run_scenario) == 1  # static failed
    assert [run.label for run in asked] == ["fl", "ares", "static"]
    assert asked[1].overrides == {
        "policy": "ares", "split": None, "alpha": 0.5, "seed": 3, "batches_per_round": 3,
    }  # fmt: skip
    assert (asked[1].rounds, asked[1].run_dir) == (2, tmp_path / "runs" / "ares")
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["policies"]) == ["fl", "ares"]
    assert results["failed"] == {
        "static": f"the edge service failed (exit 1); logs in {tmp_path / 'runs' / 'static'}"
    }
    assert results["summary"]["best_objective"] == "ares"
    assert (tmp_path / "summary.md").exists()


def test_an_interrupted_run_stops_the_bench(tmp_path):
    def run_scenario(run: ScenarioRun) -> Outcome:
        return Outcome(130, 1.0, run.run_dir, None, "interrupted")

    options = BenchOptions(scenario=load_scenario(TINY), out=tmp_path, policies=("fl", "ares"))
    assert bench(options, run_scenario) == 130
    assert not (tmp_path / "results.json").exists()


def test_experiments_never_import_the_cli():
    code = (
        "import sys, experiments.runner, experiments.plots; "
        "cli = sorted(m for m in sys.modules if m == 'ares' or m.startswith('ares.')); "
        "sys.exit(f'imported {cli}' if cli else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
