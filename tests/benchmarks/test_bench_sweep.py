"""bench_sweep.py's table: measured savings from each point's results, the model's beside them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from schemas.report import DeviceRoundReport, RoundReport, RunReport

BENCH = Path(__file__).parents[2] / "benchmarks" / "bench_sweep.py"


def run_report(cuts: dict[str, int], time_s: float, energy_j: float) -> dict[str, Any]:
    """One policy's report: two rounds whose plans predict ``time_s`` and ``energy_j`` each."""
    measured = {
        "status": "ok", "batches": 2, "samples": 64, "busy_s": 1.0, "wire_dtype": "int8",
        "train_loss": 1.0, "rtt_median_s": 0.1, "energy_j": 1.0, "uplink_mbps": None,
        "downlink_mbps": None, "battery_pct": None, "link_mode": "tc", "emulation_behind_s": 0.0,
        "round_s": 0.8 * time_s,  # measured at the edge
    }  # fmt: skip
    devices = {
        d: DeviceRoundReport(
            cut=cut,
            server_s=0.1 if cut < 7 else 0.0,  # the edge serves no batch at cut L
            predicted_time_s=time_s,
            predicted_energy_j=energy_j / len(cuts),
            **measured,
        )
        for d, cut in cuts.items()
    }
    rounds = [
        RoundReport(
            round=n,
            accuracy=0.9,
            loss=1.0,
            train_loss=1.0,
            duration_s=time_s,
            objective=0.5,
            devices=devices,
        )
        for n in (1, 2)
    ]
    return RunReport(
        policy="ares", alpha=0.5, model="small_cnn", dataset="digits", session="s",
        started_at=0.0, rounds=rounds,
    ).model_dump()  # fmt: skip


def write_point(out: Path, name: str, ares_objective: float = 0.55) -> None:
    results = {
        "policies": {
            "ares": run_report({"pi": 2, "nano": 4}, time_s=5.0, energy_j=30.0),
            "fl": run_report({"pi": 7, "nano": 7}, time_s=10.0, energy_j=60.0),
            "sl-best": run_report({"pi": 4, "nano": 4}, time_s=5.0, energy_j=40.0),
        },
        "summary": {
            "best_objective": "ares",
            "policies": {
                "ares": {"objective": ares_objective, "final_accuracy": 0.9},
                "fl": {"objective": 1.0, "final_accuracy": 0.9},
                "sl-best": {"objective": 0.6, "final_accuracy": 0.9},
            },
            "ares_vs": {
                "fl": {"time": -0.4, "energy": -0.45},
                "sl-best": {"time": 0.01, "energy": -0.2},
            },
        },
    }
    (out / name).mkdir(parents=True)
    (out / name / "results.json").write_text(json.dumps(results))


def rebuild_table(out: Path, rates: str, dtypes: str) -> str:
    """Run the sweep with --table-only on ``out``; its standard output."""
    done = subprocess.run(
        [sys.executable, str(BENCH), "--out", str(out), "--rates", rates,
         "--dtypes", dtypes, "--table-only"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_table_only_rebuilds_the_table_with_predictions_beside_measurements(tmp_path):
    write_point(tmp_path, "20mbit-float32")  # 50 Mbit/s was never run: no row, no failure
    rebuild_table(tmp_path, "20,50", "float32")
    table = (tmp_path / "sweep.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 20 Mbit/s")]
    assert len(rows) == 1
    assert "50 Mbit/s" not in table
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:3] == ["20 Mbit/s", "float32", "4 2"]  # nano, pi: the last round's cuts
    assert cells[3] == "int8 int8"  # and formats
    # Measured saving, then the plans' prediction: time 5 s against 10 s, energy 30 J against 60.
    assert cells[4:9] == ["+40% (+50%)", "+50%", "+45% (+50%)", "-1% (+0%)", "+20% (+25%)"]
    assert cells[9:] == ["0.550 / 1.000 / 0.600", "ares"]


def test_a_point_run_several_times_shows_medians_and_ranges(tmp_path):
    write_point(tmp_path, "100mbit-float16")
    write_point(tmp_path, "100mbit-float16-r2", ares_objective=0.62)
    write_point(tmp_path, "100mbit-float16-r3", ares_objective=0.605)
    (tmp_path / "100mbit-float16-r4.yaml").write_text("")  # a scenario file, not a run
    table = rebuild_table(tmp_path, "100", "float16")
    row = next(line for line in table.splitlines() if line.startswith("| 100 Mbit/s"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "100 Mbit/s (3 runs)"
    # ARES: 0.55, 0.62, 0.605 -> median 0.605, worse than sl-best's 0.600 but within 1%.
    assert cells[9] == "0.605 (0.550–0.620) / 1.000 / 0.600"
    assert cells[10] == "sl-best (ares within 1%)"
