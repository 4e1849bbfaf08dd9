"""``ares bench --task inference`` end to end, small: two policies, two devices, the tests' tiny
model, a handful of requests each. Every policy gets its own Mosquitto on a free port, the
serving edge and one ``ares device --serve`` process per device, as a real bench run does; the
load generator waits on their messages (plan, warm-up answers, serving windows), never on a
clock, so the run takes as long as a busy machine needs and no longer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ares.cli import main
from tests.serving.artifacts import make_artifact

pytestmark = pytest.mark.broker

POLICY_FIELDS = {
    "latency_ms_mean", "latency_ms_p50", "latency_ms_p99", "energy_j_per_request", "accuracy",
    "exit_rate", "sent", "answered", "degraded", "errors", "lost", "devices",
}  # fmt: skip
SCENARIO = """\
name: tiny-serving
model: small_cnn
dataset: digits
devices:
  - {id: dev-a, profile: host, uplink: 50}
  - {id: dev-b, profile: jetson-nano-maxn, uplink: 50}
"""


def test_a_small_inference_bench_writes_every_figure(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(SCENARIO)
    artifact = tmp_path / "model.ares"
    make_artifact(artifact)
    out = tmp_path / "out"
    code = main([
        "bench", "--task", "inference", "--scenario", str(scenario), "--artifact", str(artifact),
        "--out", str(out), "--policies", "ares,edge", "--requests", "6", "--rate", "4",
        "--no-progress",
    ])  # fmt: skip
    assert code == 0, (out / "summary.md").read_text() if (out / "summary.md").exists() else ""
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "inference"
    assert set(results["policies"]) == {"ares", "edge"}
    assert results["artifact"]["fingerprint"]
    assert 0 <= results["full_accuracy"] <= 1
    for name, policy in results["policies"].items():
        assert set(policy) >= POLICY_FIELDS, name
        assert policy["sent"] == 12
        assert policy["sent"] == policy["answered"] + policy["lost"]
        assert policy["lost"] == 0, name
        assert policy["errors"] == 0, name
        assert set(policy["devices"]) == {"dev-a", "dev-b"}
        for device in policy["devices"].values():
            assert set(device) >= POLICY_FIELDS - {"devices"}
            assert device["sent"] == device["answered"] + device["lost"] == 6
        # Each device's serving windows priced its answers (the emulated board's power; the
        # host declares none, so its energy is unknown rather than zero).
        assert policy["devices"]["dev-b"]["energy_j_per_request"] is not None
        assert policy["plan"] is not None
        assert set(policy["plan"]) == {"dev-a", "dev-b"}
    edge = results["policies"]["edge"]
    assert edge["edge_rate"] == 1.0  # everything sent to the edge: no exits
    assert edge["exit_rate"] == 0.0
    requests = (out / "runs" / "ares" / "requests.jsonl").read_text().splitlines()
    assert len(requests) == 12
    assert (out / "summary.md").read_text().startswith("# Serving bench: tiny-serving")
    assert (out / "latency_cdf.png").stat().st_size > 0
    assert (out / "timeline-ares.png").stat().st_size > 0
