"""Smoke test: bench_edge_scale.py runs end to end in --quick mode (a real edge service, light
devices speaking the real protocol) and every number it reports is there and sane."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitnn.datasets import load_local
from splitnn.models import ModelSpec
from tests.benchmarks import load_benchmark

BENCH = Path(__file__).parents[2] / "benchmarks" / "bench_edge_scale.py"
HANG_S = 900  # a hang guard on a busy host, never a pass criterion


def run_bench(*args: str, out: Path) -> tuple[dict[str, Any], str]:
    """Run the benchmark with ``args``; the numbers it wrote to ``out`` (--json), and what it
    printed."""
    done = subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=HANG_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    numbers: dict[str, Any] = json.loads(out.read_text())
    return numbers, done.stdout


@pytest.mark.slow
def test_quick_run_trains_every_batch_without_a_miss(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    numbers, printed = run_bench("--quick", "--json", str(out), "--keep", str(tmp_path), out=out)
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
    assert "lag p50/p99/max ms" in printed  # the table was printed
    # The edge's own run report carries the loop lag its monitor measured.
    report = json.loads((tmp_path / f"devices-{devices}" / "report.json").read_text())
    assert report["loop_lag"]["total_samples"] > 0


def test_serving_rate_counts_the_rounds_windows_not_the_time_between_them() -> None:
    bench = load_benchmark("bench_edge_scale")

    def device(batches: int, server_s: float, round_s: float | None) -> dict:
        return {"batches": batches, "server_s": server_s, "round_s": round_s}

    report = {
        "rounds": [
            # Round 1's window is its slowest device's: 4 s; round 2's 6 s (one device has
            # no round_s: it never started, and counts for nothing).
            {"duration_s": 30.0, "devices": {"a": device(10, 2.0, 4.0), "b": device(10, 2.0, 3.0)}},
            {"duration_s": 30.0, "devices": {"a": device(10, 4.0, 6.0), "b": device(0, 0.0, None)}},
        ]
    }
    serving = bench.serving_numbers(report)
    assert serving["serving_s"] == pytest.approx(10.0)
    assert serving["batches"] == 30
    assert serving["batches_per_s"] == pytest.approx(3.0)  # not 30 / 60 s of rounds
    assert serving["step_s"] == pytest.approx(0.8 / 3)
    assert serving["busy_workers"] == pytest.approx(0.8)
    empty = bench.serving_numbers({"rounds": []})
    assert math.isnan(empty["batches_per_s"])
    assert math.isnan(empty["step_s"])


def test_the_held_out_subset_holds_every_class(tmp_path: Path) -> None:
    bench = load_benchmark("bench_edge_scale")
    labels = np.array([0] * 50 + [1] * 3 + [2] * 50, dtype=np.int64)
    index = bench.held_out_subset(labels, 9, 3)
    assert len(index) == 9
    assert set(labels[index]) == {0, 1, 2}
    assert list(index) == sorted(index)
    with pytest.raises(ValueError, match="all 3 classes"):
        bench.held_out_subset(labels, 2, 3)
    # Written as the .npz the edge's --data reads: the model's input shape, every class.
    config = bench.Config(
        devices=(2,), rounds=1, batches=1, batch_size=4, think_s=0.1, jitter=0.0, split=1,
        model="small_cnn", dataset="digits", policy="sl", batch_timeout_s=5.0, per_process=2,
        cprofile=False, compute_workers=2, switch_interval_ms=None, eval_samples=30,
    )  # fmt: skip
    bench.write_held_out(config, tmp_path / "held-out.npz")
    held_out = load_local(tmp_path / "held-out.npz", "test").dataset
    assert len(held_out) == 30
    assert held_out.input_shape == (1, 8, 8)
    assert held_out.num_classes == 10


def test_the_per_model_summary_names_each_model_and_its_rate(capsys) -> None:
    bench = load_benchmark("bench_edge_scale")
    spec = ModelSpec("vgg5", (3, 32, 32), 10)
    facts = bench.model_facts(spec, 1)
    assert (facts["blocks"], facts["edge_blocks"]) == (7, 6)
    assert facts["act_values_per_sample"] == 32 * 32 * 32
    assert 0 < facts["edge_params"] < facts["params"]
    config = bench.Config(
        devices=(20,), rounds=2, batches=5, batch_size=20, think_s=0.2, jitter=0.2, split=1,
        model="vgg5", dataset="synthetic", policy="sl", batch_timeout_s=60.0, per_process=100,
        cprofile=False, compute_workers=2, switch_interval_ms=None, eval_samples=200,
        models=("vgg5",),
    )  # fmt: skip
    result = {
        "model": "vgg5", "devices": 20, "offered_batches_per_s": 100.0, "batches_per_s": 20.0,
        "serving": {"batches_per_s": 41.5, "step_s": 0.04, "busy_workers": 1.66},
        "model_facts": facts, "rtt_s": {"median": 0.4, "p99": 0.9}, "late_gradients": 0,
        "failed_batches": 0, "not_ok_device_rounds": 0, "edge_peak_rss_mib": 812.0,
        "cpu_share": {"edge": 0.9, "mosquitto": 0.1, "devices": 0.3},
    }  # fmt: skip
    bench.print_models(config, [result])
    row = next(line for line in capsys.readouterr().out.splitlines() if "vgg5" in line)
    assert row.split()[:7] == ["vgg5", "6/7", "0.58M", "2.50", "20", "100", "41.5"]
    assert row.split()[-1] == "812"


@pytest.mark.slow
def test_quick_replica_run_serves_every_batch_with_one_edge_and_with_two_replicas(
    tmp_path: Path,
) -> None:
    """--replicas 1,2: the same load served by the plain edge, then by replicas r1 and r2 on one
    broker; both rows printed, every batch served once, each replica served its share."""
    out = tmp_path / "replicas.json"
    numbers, printed = run_bench("--replicas", "1,2", "--quick", "--json", str(out), out=out)
    config = numbers["config"]
    devices, rounds, batches = config["devices"][0], config["rounds"], config["batches"]
    one, two = numbers["results"]
    assert (one["edges_label"], two["edges_label"]) == ("1 edge", "2 replicas")
    for result in (one, two):
        assert result["rounds_completed"] == result["rounds_all_ok"] == rounds
        assert result["batches"] == devices * rounds * batches
        assert result["rejections"] == {}
        assert result["device_failures"] == {}
        assert result["late_gradients"] == result["failed_batches"] == 0
        timing = result["round_timing"]
        assert timing["rounds"] == list(range(1, rounds + 1))
        assert len(timing["between_rounds_s"]) == rounds - 1
        assert all(0 < gap < 10 for gap in timing["between_rounds_s"])
        assert 0 < result["rounds_batches_per_s"] <= 1.5 * result["offered_batches_per_s"]
    assert set(one["replicas"]) == {"edge"}
    assert one["replicas"]["edge"]["batches"] == devices * rounds * batches
    # The replicas split the devices: each served some, together every batch, once.
    assert set(two["replicas"]) == {"r1", "r2"}
    served = [r["batches"] for r in two["replicas"].values()]
    assert all(n > 0 for n in served)
    assert sum(served) == devices * rounds * batches
    assert two["coordinator"] in {"r1", "r2"}
    assert [r["coordinated"] for r in two["replicas"].values()].count(True) == 1
    rows = [line.split() for line in printed.splitlines()]
    assert any(row[:3] == ["1", "edge", str(devices)] for row in rows)
    assert any(row[:3] == ["2", "replicas", str(devices)] for row in rows)
    assert "2 replicas, 8 devices: served x" in printed


def test_round_timing_lines_up_the_device_processes_marks() -> None:
    bench = load_benchmark("bench_edge_scale")
    # Two device processes; per round the first and last round start and part sent.
    fleets = [
        {"1": {"start": [10.0, 10.1], "upload": [14.0, 15.0]},
         "2": {"start": [15.5, 15.6], "upload": [19.0, 19.5]}},
        {"1": {"start": [10.05, 10.3], "upload": [14.5, 15.2]},
         "2": {"start": [15.4, 15.7], "upload": [19.2, 20.0]}},
    ]  # fmt: skip
    report = {
        "rounds": [
            {"duration_s": 5.5, "devices": {"a": {"round_s": 5.0}, "b": {"round_s": 4.0}}},
            {"duration_s": 4.9, "devices": {"a": {"round_s": 4.5}, "b": {"round_s": None}}},
        ]
    }
    timing = bench.round_timing(report, fleets, {1: 9.0, 2: 15.3})
    assert timing["rounds"] == [1, 2]
    assert timing["device_windows_s"] == pytest.approx([5.2, 4.6])  # 10.0 -> 15.2, 15.4 -> 20.0
    assert timing["between_rounds_s"] == pytest.approx([0.2])  # 15.2 -> 15.4
    assert timing["start_spread_s"] == pytest.approx([0.3, 0.3])
    assert timing["rounds_span_s"] == pytest.approx(10.0)
    assert timing["report_overhead_s"] == pytest.approx([0.5, 0.4])
    # The gap in two at round 2's plan: 15.2 -> 15.3 -> 15.4.
    assert timing["to_plan_s"] == pytest.approx([0.1])
    assert timing["plan_to_start_s"] == pytest.approx([0.1])
    assert bench.round_timing({"rounds": []}, [])["between_rounds_s"] == []


def test_plan_times_come_from_the_edges_log() -> None:
    bench = load_benchmark("bench_edge_scale")
    log = (
        "2026-12-04 12:17:30,619 edge INFO transport.mqtt: ares-edge-r1 connected\n"
        "2026-12-04 12:17:35,347 edge INFO edge_service.driver: round 1 plan (sl, objective 0.3):\n"
        "2026-12-04 12:17:35,347 edge INFO edge_service.driver:   dev-0400: cut 1, 3.35 s\n"
        "2026-12-04 12:17:41,012 edge INFO edge_service.driver: round 2 plan (sl, objective 0.3):\n"
    )
    plans = bench.plan_times(log)
    assert list(plans) == [1, 2]
    assert plans[2] - plans[1] == pytest.approx(5.665)


def test_edge_sets_parse_the_replica_counts() -> None:
    bench = load_benchmark("bench_edge_scale")
    assert bench.EdgeSet.parse("1").names == [None]
    assert bench.EdgeSet.parse("2").names == ["r1", "r2"]
    assert bench.EdgeSet.parse("1r").names == ["r1"]
    assert [bench.EdgeSet.parse(t).label for t in ("1", "1r", "3")] == [
        "1 edge", "1 replica", "3 replicas"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="at least one edge"):
        bench.EdgeSet.parse("0")


@pytest.mark.slow
def test_quick_site_run_serves_the_devices_at_the_core_and_behind_a_bridge(tmp_path: Path) -> None:
    """--sites: the light devices over TLS with their own accounts, at the core, then at a site
    bridged to it; every batch served both times, and the summary line printed."""
    out = tmp_path / "sites.json"
    numbers, printed = run_bench("--sites", "--quick", "--json", str(out), out=out)
    config = numbers["config"]
    devices, rounds, batches = config["devices"][0], config["rounds"], config["batches"]
    assert [r["network"] for r in numbers["results"]] == ["core", "site"]
    for result in numbers["results"]:
        assert result["rounds_completed"] == result["rounds_all_ok"] == rounds
        assert result["batches"] == devices * rounds * batches
        assert result["rtt_s"]["n"] == devices * rounds * batches
        assert result["rejections"] == {}
    assert f"{devices} devices: the bridge adds" in printed
