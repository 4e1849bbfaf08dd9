"""Smoke test: bench_bridge_cut.py runs end to end with a short cut and fast reconnects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks" / "bench_bridge_cut.py"


@pytest.mark.slow
def test_short_cuts_of_both_kinds_lose_nothing(tmp_path: Path) -> None:
    out = tmp_path / "cut.json"
    flags = ["--cut-s", "1", "--keepalive", "5", "--restart-timeout", "1", "1",
             "--messages", "3", "--size", "1000", "--json", str(out)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(BENCH), *flags],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"reset", "silent"}
    for result in results.values():
        assert result["acts_all_in_order"]
        assert result["grads_all_in_order"]
        assert 0 <= result["acts_caught_up_s"] < 60
    # A reset is noticed at once and the bridge reconnects through the link again; a 1 s dark
    # spell is shorter than the keepalive: nobody notices and the connection carries on.
    assert results["reset"]["core_noticed_after_s"] is not None
    assert results["reset"]["wan_connections"] == 2
    assert results["silent"]["core_noticed_after_s"] is None
    assert results["silent"]["wan_connections"] == 1
