"""bench_device_memory.py: its pure parts, and a quick run (tiny: a real broker, edge and
device) whose numbers are all there and sane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from splitnn.datasets import load_local
from tests.benchmarks import BENCHMARKS, load_benchmark

STATUS = """Name:\tpython
VmPeak:\t 1200000 kB
VmHWM:\t  409600 kB
VmRSS:\t  307200 kB
Threads:\t4
"""


def test_memory_is_read_from_the_kernels_status_lines() -> None:
    bench = load_benchmark("bench_device_memory")
    memory = bench.read_memory(STATUS)
    assert (memory.peak_mib, memory.rss_mib) == (400.0, 300.0)
    with pytest.raises(ValueError, match="exited"):
        bench.read_memory("Name:\tpython\nState:\tZ (zombie)\n")  # a zombie has no memory


def test_each_model_gets_data_of_its_shape(tmp_path: Path) -> None:
    bench = load_benchmark("bench_device_memory")
    assert bench.data_shape("cnn1d") == ((3, 128), 6)
    assert bench.data_shape("resnet18") == ((3, 32, 32), 10)
    assert bench.data_shape("tiny") == ((1, 8, 8), 10)
    config = bench.Config(
        models=("cnn1d",), cuts=("fl",), cold_cut=None, rounds=1, batches=1, batch_size=4,
        samples=30, eval_samples=12,
    )  # fmt: skip
    bench.write_data("cnn1d", tmp_path, config)
    # Read back as the device's and the edge's --data read them.
    train = load_local(tmp_path / "train.npz").dataset
    held_out = load_local(tmp_path / "held-out.npz", "test").dataset
    assert (len(train), len(held_out)) == (30, 12)
    assert train.input_shape == held_out.input_shape == (3, 128)
    assert train.num_classes == held_out.num_classes == 6
    assert train.x.dtype == np.float32


def test_cuts_are_named_or_numbered() -> None:
    bench = load_benchmark("bench_device_memory")
    assert [bench.resolve_cut(c, 7) for c in ("mid", "fl", "2")] == [3, 7, 2]
    assert bench.resolve_cut("mid", 1) == 1
    with pytest.raises(ValueError, match="outside"):
        bench.resolve_cut("8", 7)


@pytest.mark.slow
def test_quick_run_measures_the_device_at_a_cut_and_at_fl(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_device_memory.py"), "--quick", "--json",
         str(out)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    numbers = json.loads(out.read_text())
    base = numbers["baseline"]
    assert 0 < base["imported"]["rss_mib"] <= base["warmed_up"]["rss_mib"]
    first, fl = numbers["results"]
    # First the middle cut with an empty profile cache, then fl (cut L) with it warm.
    assert (first["model"], first["cut"], first["profiled"]) == ("tiny", 1, True)
    assert (fl["cut"], fl["blocks"], fl["profiled"]) == (3, 3, False)
    assert fl["device_params"] == fl["params"] > first["device_params"]
    for run in (first, fl):
        assert run["batches"] == numbers["config"]["batches"]
        # The device imported torch and trained: at least the baseline's imports.
        assert base["imported"]["rss_mib"] < run["peak_rss_mib"] < 4096
    assert "above baseline MiB" in done.stdout
