"""Smoke test: weight_delta_costs.py runs end to end and finds deltas a quarter and an eighth of
float32 on VGG5's whole model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "benchmarks" / "weight_delta_costs.py"


def test_a_short_run_prints_every_cut_asked_for() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--cuts", "1,7", "--batches", "1", "--repeats", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines()[3:]]
    assert [row[0] for row in rows] == ["1", "7"]
    fl = rows[1]  # cut 7: the int8 and int4 ratios
    assert 0.24 < float(fl[4]) < 0.26
    assert 0.12 < float(fl[10]) < 0.13
