"""`ares demo` end to end: separate processes, a real Mosquitto, a report that validates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ares.demo import DemoOptions, RoundProgress, progress_line, scenario_devices
from schemas import EdgeStatus
from schemas.report import RunReport
from testbed.scenario import load_scenario


def test_demo_runs_processes_and_writes_a_valid_report(tmp_path):
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "ares", "demo", "--devices", "2", "--rounds", "3",
         "--batch-size", "16", "--run-dir", str(tmp_path), "--report", str(report_path)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = RunReport.model_validate(json.loads(report_path.read_text()))
    assert [r.round for r in report.rounds] == [1, 2, 3]
    assert all(set(r.devices) == {"dev-0", "dev-1"} for r in report.rounds)
    devices = [d for r in report.rounds for d in r.devices.values()]
    assert all(d.cut >= 1 and d.status in ("ok", "straggler") for d in devices)
    assert all(0 <= r.accuracy <= 1 and r.loss >= 0 and r.duration_s > 0 for r in report.rounds)
    assert report.final_accuracy is not None
    assert report.final_accuracy > 0.5  # chance is 0.1
    assert "final accuracy" in done.stdout
    assert "round  accuracy" in done.stdout  # the per-round table
    for name in ("edge", "dev-0", "dev-1"):
        assert (tmp_path / f"{name}.log").exists()
    # Nothing the demo started outlives it.
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout == ""


# --- the options and the progress display, without processes ----------------------------------

TINY = Path(__file__).with_name("data") / "tiny.yaml"


def test_scenario_options_take_overrides_over_the_scenario(tmp_path):
    options = DemoOptions.for_scenario(
        load_scenario(TINY),
        run_dir=tmp_path,
        overrides={"policy": "sl", "split": 2, "alpha": None, "seed": 7},
        extra_edge_flags=("--fresh",),
        label="sl-first",
    )
    flags = options.edge_flags
    assert flags[flags.index("--policy") + 1] == "sl"
    assert flags[flags.index("--split") + 1] == "2"
    assert flags[flags.index("--alpha") + 1] == "0.5"  # None keeps the scenario's
    assert flags[-1] == "--fresh"
    assert options.rounds == 2
    assert options.report == tmp_path / "report.json"
    # The devices get the same seed as the edge: the same data shards for every policy.
    for device in options.devices:
        assert device.flags[device.flags.index("--seed") + 1] == "7"
    with pytest.raises(ValueError, match="rounds"):
        DemoOptions.for_scenario(load_scenario(TINY), run_dir=tmp_path, overrides={"rounds": 3})


def test_a_scenarios_own_data_goes_to_the_edge_and_each_device(tmp_path):
    scenario = load_scenario(TINY).model_copy(
        update={"data": tmp_path / "test", "input_shape": (1, 16, 16), "classes": ["a", "b"]}
    )
    devices = [d.model_copy(update={"data": tmp_path / d.id}) for d in scenario.devices]
    scenario = scenario.model_copy(update={"devices": devices})
    options = DemoOptions.for_scenario(scenario, run_dir=tmp_path)
    flags = options.edge_flags
    assert flags[flags.index("--data") + 1] == str(tmp_path / "test")
    assert flags[flags.index("--input-shape") + 1] == "1,16,16"
    for device in options.devices:
        assert device.flags[device.flags.index("--data") + 1] == str(tmp_path / device.device_id)
        assert device.flags[device.flags.index("--classes") + 1] == "a,b"


def status(done: int, state: str = "training", accuracy: float | None = 0.5) -> EdgeStatus:
    return EdgeStatus(
        session="s1", state=state, round=max(done, 1), rounds=3, rounds_done=done,
        devices={"a": "idle", "b": "offline"}, accuracy=accuracy, loss=1.0,
    )  # fmt: skip


def test_emulated_devices_declare_the_link_they_start_on():
    # bandwidth-drop runs at time scale 2: the Pi's 40 Mbit/s carry 80 on the run's clock.
    launches = {d.device_id: d.flags for d in scenario_devices(load_scenario("bandwidth-drop"), {})}
    pi = launches["pi-b"]
    assert pi[pi.index("--uplink-mbps") + 1] == "80.0"
    assert pi[pi.index("--downlink-mbps") + 1] == "80.0"


def test_progress_without_a_bar_prints_one_line_per_round(capsys):
    with RoundProgress(3, "ares", enabled=False) as progress:
        assert not progress.bar_shown
        progress.show(status(0, "waiting", None))
        progress.show(status(1))
        progress.show(status(1, "evaluating"))  # same round: no new line
        progress.show(status(2))
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "  ares     waiting: 1 devices registered",
        "  ares [#..] round 1/3  accuracy 0.5000  loss 1.0000  1 devices",
        "  ares [##.] round 2/3  accuracy 0.5000  loss 1.0000  1 devices",
    ]


def test_progress_bar_counts_rounds_on_stderr(capsys):
    with RoundProgress(3, "fl", enabled=True) as progress:
        assert progress.bar_shown
        progress.show(status(2))
        progress.note("  warning  b exited early")
    captured = capsys.readouterr()
    assert "2/3" in captured.err
    assert "fl" in captured.err
    assert "warning  b exited early" in captured.out


def test_progress_says_how_the_run_ended_and_ignores_the_stale_last_will(capsys):
    # The edge's last will is its status as built at start-up (no rounds, no devices); the broker
    # may deliver it after the run, and it must not read as if nothing had happened.
    will = EdgeStatus(session="s1", state="stopped", round=0, rounds=3, rounds_done=0)
    finished = status(3, "finished").model_copy(update={"last_round": {"a": "ok", "b": "ok"}})
    with RoundProgress(3, enabled=False, devices=2) as progress:
        progress.show(status(0, "waiting", None))
        progress.show(status(3))
        progress.show(finished)
        progress.show(will)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "  edge     waiting: 1 of 2 devices registered"
    assert lines[-1] == "  edge     finished: 3 of 3 rounds, 2 devices trained, accuracy 0.5000"
    assert not any("0 of the devices" in line or "stopped" in line for line in lines)


def test_progress_says_an_edge_stopped_before_training():
    stopped = EdgeStatus(session="s1", state="stopped", round=0, rounds=3, rounds_done=0)
    assert progress_line(stopped) == "  edge     stopped before round 1: 0 devices registered"
