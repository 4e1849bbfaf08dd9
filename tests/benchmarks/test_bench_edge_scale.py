"""Smoke test: bench_edge_scale.py runs end to end in --quick mode (a real edge service, light
devices speaking the real protocol) and every number it reports is there and sane."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks" / "bench_edge_scale.py"


@pytest.mark.slow
def test_quick_run_trains_every_batch_without_a_miss(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out), "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    numbers = json.loads(out.read_text())
    config = numbers["config"]
    (result,) = numbers["results"]
    devices, rounds, batches = config["devices"][0], config["rounds"], config["batches"]
    assert result["devices"] == devices
    assert result["device_processes"] == math.ceil(devices / config["per_process"])
    assert result["rounds_completed"] == result["rounds_all_ok"] == rounds
    # Every batch of every device in every round was served exactly once.
    assert result["batches"] == devices * rounds * batches
    assert result["rtt_s"]["n"] == result["edge_server_s"]["n"] == devices * rounds * batches
    # The light devices speak the protocol: nothing rejected, nothing late, nobody dropped.
    assert result["rejections"] == {}
    assert result["device_failures"] == {}
    assert result["late_gradients"] == result["failed_batches"] == 0
    assert result["not_ok_device_rounds"] == 0
    assert result["devices_finished"]
    lag = result["lag_training"]
    assert lag["samples"] > 10
    assert 0 <= lag["p50_s"] <= lag["p99_s"] <= lag["max_s"] < 5
    assert 0 < result["batches_per_s"] <= 1.5 * result["offered_batches_per_s"]
    assert 0 < result["cpu_share"]["edge"] < 2
    assert "lag p50/p99/max ms" in done.stdout  # the table was printed
    # The edge's own run report carries the loop lag its monitor measured.
    report = json.loads((tmp_path / f"devices-{devices}" / "report.json").read_text())
    assert report["loop_lag"]["total_samples"] > 0
