"""``ares demo --edges/--sites``: the flags, who serves whom as read from the cluster's retained
messages, and one run end to end (real Mosquitto brokers bridged over TLS, separate processes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ares.cluster_demo
import ares.demo
from ares.cli import main
from ares.cluster_demo import (
    ClusterDemo,
    ClusterLayout,
    ClusterResult,
    ServingBoard,
    mqtt_environment,
    replica_lines,
    serving_line,
)
from ares.demo import DemoOptions, RunResult
from schemas import Topics, to_json
from schemas.cluster import OrderEntry, ReplicaStatus, RoundOrder
from schemas.messages import DevicePlanEntry, TrainConfig
from schemas.report import RunReport
from transport import MqttSettings

# --- the flags ----------------------------------------------------------------------------------


def empty_report() -> dict[str, object]:
    return RunReport(
        policy="ares", alpha=0.5, model="m", dataset="d", session="s", started_at=0.0,
        final_accuracy=0.5,
    ).model_dump()  # fmt: skip


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[object]:
    """What each demo run was started with: a ClusterDemo, or one edge's DemoOptions. No
    process starts."""
    started: list[object] = []

    def run_cluster(demo: ClusterDemo) -> ClusterResult:
        started.append(demo)
        run = RunResult(0, 0.1, demo.options.run_dir, empty_report())
        return ClusterResult(run, ServingBoard(Topics()), coordinator="edge-1")

    def run_once(options: DemoOptions) -> RunResult:
        started.append(options)
        return RunResult(0, 0.1, options.run_dir, empty_report())

    monkeypatch.setattr(ares.cluster_demo, "run_cluster", run_cluster)
    monkeypatch.setattr(ares.demo, "run_once", run_once)
    monkeypatch.delenv("ARES_CONFIG", raising=False)
    monkeypatch.delenv("ARES_MQTT__URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return started


def flag_value(argv: list[str] | tuple[str, ...], flag: str) -> str:
    return argv[list(argv).index(flag) + 1]


def test_two_replicas_at_two_sites_get_their_own_names_sites_checkpoints_and_reports(runs):
    assert main(["demo", "--edges", "2", "--sites", "2", "--devices", "4", "--rounds", "2"]) == 0
    (demo,) = runs
    assert isinstance(demo, ClusterDemo)
    assert demo.layout == ClusterLayout(edges=2, sites=2)
    first, second = (demo.replica_argv(name) for name in ("edge-1", "edge-2"))
    assert (flag_value(first, "--replica"), flag_value(first, "--site")) == ("edge-1", "site-1")
    assert (flag_value(second, "--replica"), flag_value(second, "--site")) == ("edge-2", "site-2")
    for flag in ("--checkpoint", "--report"):
        assert flag_value(first, flag) != flag_value(second, flag)
    assert flag_value(first, "--min-devices") == "4"  # the coordinator waits for all of them
    sites = {d.device_id: flag_value(d.flags, "--site") for d in demo.options.devices}
    assert sites == {"dev-0": "site-1", "dev-1": "site-2", "dev-2": "site-1", "dev-3": "site-2"}


def test_edges_alone_is_one_broker_and_sites_alone_one_replica(runs):
    assert main(["demo", "--edges", "2"]) == 0
    assert main(["demo", "--sites", "2"]) == 0
    replicas_only, sites_only = runs
    assert isinstance(replicas_only, ClusterDemo)
    assert isinstance(sites_only, ClusterDemo)
    assert replicas_only.layout == ClusterLayout(edges=2, sites=0)
    assert all("--site" not in d.flags for d in replicas_only.options.devices)
    assert "--site" not in replicas_only.replica_argv("edge-2")
    assert sites_only.layout == ClusterLayout(edges=1, sites=2)
    assert sites_only.layout.replicas == ("edge-1",)


def test_without_edges_or_sites_the_demo_runs_one_edge_as_before(runs):
    assert main(["demo", "--devices", "2"]) == 0
    (options,) = runs
    assert isinstance(options, DemoOptions)
    assert "--replica" not in options.edge_argv()
    assert flag_value(options.edge_argv(), "--checkpoint").endswith("edge.ckpt")


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--edges", "0"], "--edges must be at least 1, got 0"),
        (["--sites", "0"], "--sites must be at least 1"),
        (["--sites", "3", "--devices", "2"], "--sites 3 needs at least as many devices, got 2"),
        (["--sites", "4"], "got 3"),  # the default three devices
        (["--edges", "2", "--scenario", "paper-testbed"], "do not combine with --scenario"),
        (["--edges", "2", "--broker", "mqtt://127.0.0.1:1"], "start their own brokers"),
        (["--edges", "2", "--devices", "0"], "--devices must be at least 1"),
    ],
)
def test_nonsense_is_refused_in_one_line_before_anything_starts(runs, capsys, argv, problem):
    assert main(["demo", *argv]) == 2
    captured = capsys.readouterr()
    assert runs == []
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ares demo: ")
    assert problem in lines[0]


def test_replicas_get_the_cores_account_as_variables_and_no_stale_broker_variable():
    env = {"ARES_MQTT__URL": "mqtt://elsewhere:1", "ARES_MQTT__PASSWORD_FILE": "/x", "PATH": "/b"}
    settings = MqttSettings(url="mqtt://127.0.0.1:5", username="edge", password="secret")
    assert mqtt_environment(env, settings) == {
        "PATH": "/b",
        "ARES_MQTT__URL": "mqtt://127.0.0.1:5",
        "ARES_MQTT__USERNAME": "edge",
        "ARES_MQTT__PASSWORD": "secret",
    }


# --- who serves whom, from the retained order and statuses --------------------------------------

TOPICS = Topics()


def entry(replica: str) -> OrderEntry:
    plan = DevicePlanEntry(
        cut=2, predicted_time_s=1.0, predicted_energy_j=1.0, reason="r", inputs="measured"
    )
    train = TrainConfig(lr=0.01, batch_size=16, batches=4, batch_timeout_s=10.0)
    return OrderEntry(replica=replica, plan=plan, train=train)


def order(round_no: int, devices: dict[str, str], attempt: int = 0) -> RoundOrder:
    return RoundOrder(
        coordinator="edge-1", epoch=1, round=round_no, attempt=attempt, base_round=round_no - 1,
        deadline_s=30.0, devices={device: entry(replica) for device, replica in devices.items()},
    )  # fmt: skip


def replica_status(name: str, site: str | None, state: str = "up") -> ReplicaStatus:
    return ReplicaStatus.model_validate({
        "replica": name, "session": f"s-{name}", "state": state, "site": site,
        "capacity_bps": 1.0, "sent_at": 0.0,
    })  # fmt: skip


SPREAD = {"dev-2": "edge-1", "dev-10": "edge-1", "dev-0": "edge-1", "dev-1": "edge-2"}


def test_a_round_line_names_each_replicas_devices_and_site():
    replicas = {
        "edge-2": replica_status("edge-2", "site-2"),
        "edge-1": replica_status("edge-1", "site-1"),
    }
    assert serving_line(order(2, SPREAD), replicas) == (
        "round 2: edge-1 serves dev-0, dev-2, dev-10 (site-1); edge-2 serves dev-1 (site-2)"
    )
    # Without statuses (or sites): no site; a replica up but given nothing says so.
    assert serving_line(order(1, {"dev-0": "edge-1"}), {}) == "round 1: edge-1 serves dev-0"
    idle = {"edge-2": replica_status("edge-2", None)}
    assert serving_line(order(1, {"dev-0": "edge-1"}), idle) == (
        "round 1: edge-1 serves dev-0; edge-2 serves none"
    )


def test_the_board_reads_statuses_and_shows_each_order_once():
    board = ServingBoard(TOPICS)
    assert (
        board.take(TOPICS.cluster_replica("edge-1"), to_json(replica_status("edge-1", "s1")))
        is None
    )
    assert (
        board.take(TOPICS.cluster_replica("edge-2"), to_json(replica_status("edge-2", "s2")))
        is None
    )
    assert board.up() == {"edge-1", "edge-2"}
    first = to_json(order(1, {"dev-0": "edge-1", "dev-1": "edge-2"}))
    assert board.take(TOPICS.cluster_order, first) == (
        "round 1: edge-1 serves dev-0 (s1); edge-2 serves dev-1 (s2)"
    )
    assert board.take(TOPICS.cluster_order, first) is None  # retained again on a reconnect
    # edge-2 is lost mid-round 2: its will, then the make-up attempt gives its device to edge-1.
    assert board.take(
        TOPICS.cluster_order, to_json(order(2, {"dev-0": "edge-1", "dev-1": "edge-2"}))
    )
    assert (
        board.take(
            TOPICS.cluster_replica("edge-2"), to_json(replica_status("edge-2", "s2", "stopped"))
        )
        is None
    )
    assert board.up() == {"edge-1"}
    make_up = to_json(order(2, {"dev-0": "edge-1", "dev-1": "edge-1"}, attempt=1))
    assert (
        board.take(TOPICS.cluster_order, make_up)
        == "round 2 attempt 1: edge-1 serves dev-0, dev-1 (s1)"
    )
    assert board.served() == {"edge-1": ["dev-0", "dev-1"], "edge-2": ["dev-1"]}
    # Not the cluster's, cleared, or bad: passed over.
    assert board.take(TOPICS.edge_status, b"{}") is None
    assert board.take(TOPICS.cluster_order, b"") is None
    assert board.take(TOPICS.cluster_order, b"not json") is None
    assert (
        board.take(TOPICS.cluster_replica("edge-3"), to_json(replica_status("edge-1", None)))
        is None
    )
    assert "edge-3" not in board.replicas  # a status under another replica's name


def test_the_summary_says_per_replica_its_role_devices_log_and_report(tmp_path):
    options = DemoOptions(
        rounds=2, broker=None, run_dir=tmp_path, report=tmp_path / "report.json", timeout_s=9.0,
        edge_flags=(), devices=(),
    )  # fmt: skip
    demo = ClusterDemo(options, ClusterLayout(edges=2, sites=2))
    board = ServingBoard(TOPICS)
    board.take(TOPICS.cluster_order, to_json(order(1, {"dev-0": "edge-1", "dev-1": "edge-2"})))
    reports = {"edge-1": {"counters": {"batches": 8}}, "edge-2": {"counters": {"batches": 4}}}
    result = ClusterResult(RunResult(0, 1.0, tmp_path, {}), board, "edge-1", reports)
    assert replica_lines(demo, result) == [
        "replicas:",
        f"  edge-1 (site-1, coordinator): served dev-0; 8 batches; log {tmp_path}/edge-1.log; "
        f"report {tmp_path}/edge-1-report.json",
        f"  edge-2 (site-2): served dev-1; 4 batches; log {tmp_path}/edge-2.log; "
        f"report {tmp_path}/edge-2-report.json",
    ]


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.slow
def test_two_replicas_at_two_sites_serve_the_devices_of_one_run(tmp_path):
    report_path = tmp_path / "run-report.json"
    done = subprocess.run(
        [sys.executable, "-m", "ares", "demo", "--edges", "2", "--sites", "2", "--devices", "4",
         "--rounds", "2", "--batch-size", "16", "--batches-per-round", "4",
         "--run-dir", str(tmp_path), "--report", str(report_path), "--timeout", "150"],
        capture_output=True, text=True, timeout=200, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    # Who serves whom, per round, from the core: each replica its own site's devices.
    serving = [line.strip() for line in out.splitlines() if " serves " in line]
    assert [line.split(":")[0] for line in serving] == ["round 1", "round 2"], out
    for line in serving:
        assert line.endswith(
            ": edge-1 serves dev-0, dev-2 (site-1); edge-2 serves dev-1, dev-3 (site-2)"
        ), out
    assert "round  accuracy" in out  # the coordinator's per-round table
    report = RunReport.model_validate(json.loads(report_path.read_text()))
    assert [r.round for r in report.rounds] == [1, 2]
    assert all(len(r.devices) == 4 for r in report.rounds)
    for replica in ("edge-1", "edge-2"):
        own = json.loads((tmp_path / f"{replica}-report.json").read_text())
        assert own["counters"]["batches"] > 0, replica  # both served
        assert f"log {tmp_path}/{replica}.log" in out
    # Nothing the demo started outlives it (the brokers' configs live in the run dir, too).
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout == ""
