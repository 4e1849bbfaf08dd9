"""Smoke test: bench_transport.py runs end to end in --quick mode and writes sane numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks" / "bench_transport.py"


def run_bench(tmp_path: Path, *flags: str) -> dict:
    out = tmp_path / "transport.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    numbers: dict = json.loads(out.read_text())
    return numbers


@pytest.mark.slow
def test_quick_run_measures_every_part(tmp_path: Path) -> None:
    numbers = run_bench(tmp_path)
    loopback = numbers["loopback"]
    assert {(s["transport"], s["window"]) for s in loopback} == {
        ("mqtt", 1),
        ("mqtt", 8),
        ("tcp", 1),
        ("tcp", 8),
    }
    assert all(s["goodput_bps"] > 1e6 and s["count"] >= 2 for s in loopback)
    assert numbers["shaping"] in ("tc", "token-bucket")
    shaped = numbers["shaped"]
    assert shaped
    for sample in shaped:
        # A shaped link cannot carry more than its rate (the tbf burst is one 12 kB bucket).
        assert (
            0.3 * sample["rate_mbps"] * 1e6 < sample["goodput_bps"] < 1.05e6 * sample["rate_mbps"]
        )
    overhead = {entry["size"]: entry for entry in numbers["overhead"]}
    assert set(overhead) == {1024, 4 * 1024 * 1024}
    for entry in overhead.values():
        assert 0 < entry["encode_s"]["median"] < entry["deliver_s"]["median"] < 5.0
        assert entry["payload_bytes"] > entry["size"]
    assert numbers["machine"]["cores"] >= 1


@pytest.mark.slow
def test_token_bucket_fallback(tmp_path: Path) -> None:
    numbers = run_bench(tmp_path, "--parts", "b", "--shaping", "token-bucket")
    assert numbers["shaping"] == "token-bucket"
    assert numbers["loopback"] == []
    assert numbers["overhead"] == []
    for sample in numbers["shaped"]:
        assert (
            0.3 * sample["rate_mbps"] * 1e6 < sample["goodput_bps"] < 1.05e6 * sample["rate_mbps"]
        )
