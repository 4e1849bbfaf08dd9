"""Several edge replicas on one broker: one training run, the coordinator's plan and merged
model, and the faults (a replica killed mid-round, the coordinator killed), for real: Mosquitto,
MQTT clients, torch training; the killed replicas are processes killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from broker import LocalBroker
from device_agent import DeviceAgent, DeviceSettings
from edge_service import EdgeService, EdgeSettings
from edge_service.cluster.shares import decode_model
from schemas import Topics, parse_json
from schemas.cluster import ReplicaStatus
from schemas.codec import decode_frame
from testbed.sites import LocalSites
from tests.integration.helpers import (
    HANG_S,
    device_settings,
    edge_settings,
    mqtt,
    wait_until,
)
from transport import MqttLink, MqttSettings

DEVICES = 4
ROUNDS = 3


def replica_settings(broker: LocalBroker, name: str | None, prefix: str, **changes: Any) -> Any:
    """A replica named ``name`` (None: the only edge) on the topics under ``prefix``."""
    fields: dict[str, Any] = dict(
        mqtt=mqtt(broker, prefix=prefix),
        replica=name,
        rounds=ROUNDS,
        min_devices=DEVICES,
        split=2,
        batches_per_round=4,
        batch_size=16,
    )
    return edge_settings(broker, **{**fields, **changes})


def agents(broker: LocalBroker, prefix: str) -> list[DeviceAgent]:
    return [
        DeviceAgent(device_settings(broker, i, DEVICES, mqtt=mqtt(broker, prefix=prefix)))
        for i in range(DEVICES)
    ]


async def run_all(edges: list[EdgeService], devices: list[DeviceAgent]) -> None:
    async with asyncio.timeout(HANG_S), asyncio.TaskGroup() as tasks:
        for agent in devices:
            tasks.create_task(agent.run())
        for edge in edges:
            tasks.create_task(edge.run())


async def test_two_replicas_train_the_model_one_edge_trains(mosquitto):
    """Same seed, same cuts: the hierarchical FedAvg of two replicas ends where one edge's
    FedAvg over the same device parts ends (within float tolerance)."""
    one = EdgeService(replica_settings(mosquitto, None, "one"))
    await run_all([one], agents(mosquitto, "one"))

    first = EdgeService(replica_settings(mosquitto, "r1", "two"))
    second = EdgeService(replica_settings(mosquitto, "r2", "two"))
    # One after the other: in one process, two seeded model builds in worker threads would
    # share torch's global generator (replicas are processes of their own in production).
    await first.start_up()
    await second.start_up()
    await run_all([first, second], agents(mosquitto, "two"))

    coordinator = first if first.cluster and first.cluster.coordinated else second
    assert coordinator.cluster is not None
    assert coordinator.cluster.coordinated
    report = coordinator.report
    assert [r.round for r in report.rounds] == list(range(1, ROUNDS + 1))
    for entry in report.rounds:
        assert {d.status for d in entry.devices.values()} == {"ok"}, entry.round
        assert len(entry.devices) == DEVICES
    # Both replicas served devices: the assignment split them by load.
    served = {
        first.counters.snapshot().get("batches", 0),
        second.counters.snapshot().get("batches", 0),
    }
    assert all(batches > 0 for batches in served), served
    # Each replica read the round traffic of its own devices only (its subscriptions).
    for edge in (first, second):
        assert edge.counters.snapshot().get("others_traffic", 0) == 0
    for key, tensor in one.global_state.items():
        other = coordinator.global_state[key]
        if tensor.is_floating_point():
            torch.testing.assert_close(other, tensor, rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(other, tensor), key
    assert report.final_accuracy == one.report.final_accuracy


async def test_a_replica_started_later_serves_devices_it_never_heard(mosquitto):
    """Registration is not retained: r2 starts after the devices said hello, and the
    coordinator's order hands it their registrations with their rounds."""
    first = EdgeService(replica_settings(mosquitto, "r1", "late", rounds=4))
    second = EdgeService(replica_settings(mosquitto, "r2", "late", rounds=4))
    await first.start_up()
    await second.start_up()
    async with asyncio.timeout(HANG_S), asyncio.TaskGroup() as tasks:
        for agent in agents(mosquitto, "late"):
            tasks.create_task(agent.run())
        tasks.create_task(first.run())
        await wait_until(lambda: len(first.report.rounds) >= 1, timeout_s=HANG_S)
        tasks.create_task(second.run())
    rounds = first.report.rounds
    assert [r.round for r in rounds] == [1, 2, 3, 4]
    for entry in rounds:
        assert {d.status for d in entry.devices.values()} == {"ok"}, entry.round
    assert second.counters.snapshot().get("batches", 0) > 0  # it took devices over


async def test_a_new_run_on_the_same_broker_starts_afresh(mosquitto):
    """The coordinator clears the run's retained order, model, report and lease at its end:
    the next run's replicas do not take the finished run's model for their own."""
    for run in range(2):
        edge = EdgeService(replica_settings(mosquitto, "r1", "again", rounds=2))
        await run_all([edge], agents(mosquitto, "again"))
        assert [r.round for r in edge.report.rounds] == [1, 2], run


# --- faults: replicas are processes, killed with SIGKILL -----------------------------------------

FAULT_ROUNDS = 3
FAULT_BATCHES = 40  # long enough a round that the kill lands in it


async def start_replica(url: str, tmp_path: Path, name: str) -> asyncio.subprocess.Process:
    command = [
        sys.executable, "-m", "ares", "edge", "--broker", url, "--replica", name,
        "--rounds", str(FAULT_ROUNDS), "--min-devices", str(DEVICES), "--policy", "sl",
        "--split", "2", "--batch-size", "16", "--batches-per-round", str(FAULT_BATCHES),
        "--torch-threads", "1", "--checkpoint", str(tmp_path / f"{name}.ckpt"),
        "--report", str(tmp_path / f"{name}.json"),
    ]  # fmt: skip
    log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115, ASYNC230 - handed to the child
    return await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
    )


async def wait_serving(broker: LocalBroker, replica: str, round_no: int) -> float:
    """Until ``replica``'s retained status says it serves devices in ``round_no``; the
    perf_counter() then."""
    topics = Topics()
    async with MqttLink(mqtt(broker), f"test-watch-{replica}", [(topics.cluster_all, 1)]) as link:
        while True:
            message = await link.receive()
            if message.topic != topics.cluster_replica(replica) or not message.payload:
                continue
            status = parse_json(ReplicaStatus, message.payload)
            if status.state == "up" and status.round == round_no and status.serving:
                return time.perf_counter()


async def until_serving(
    broker: LocalBroker,
    replica: str,
    round_no: int,
    replicas: dict[str, asyncio.subprocess.Process],
    logs: Path,
) -> None:
    """``wait_serving``, failing at once if a replica exits first."""
    watch = asyncio.ensure_future(wait_serving(broker, replica, round_no))
    exits = [asyncio.ensure_future(p.wait()) for p in replicas.values()]
    await asyncio.wait([watch, *exits], return_when=asyncio.FIRST_COMPLETED)
    for waiting in exits:
        waiting.cancel()
    if not watch.done():
        watch.cancel()
        tails = {name: (logs / f"{name}.log").read_text()[-1500:] for name in replicas}
        raise AssertionError(f"a replica exited before {replica} served round {round_no}: {tails}")


async def model_out(broker: LocalBroker, round_no: int) -> float:
    """Until the global model of ``round_no`` is published; the perf_counter() then."""
    topics = Topics()
    async with MqttLink(
        mqtt(broker), f"test-model-{round_no}", [(topics.cluster_model, 1)]
    ) as link:
        while True:
            message = await link.receive()
            model, _state = decode_model(decode_frame(message.payload, max_bytes=1 << 26))
            if model.round >= round_no:
                return time.perf_counter()


def read_report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


async def run_with_a_kill(
    broker: LocalBroker, tmp_path: Path, victim: str
) -> tuple[dict[str, Any], float, list[DeviceAgent]]:
    """Replicas r1 (the coordinator: first by name) and r2, four devices; ``victim`` killed
    while it serves round 2. The survivor's report and the seconds from the kill to the end
    of round 2."""
    devices = agents(broker, Topics().prefix)
    survivor = "r2" if victim == "r1" else "r1"
    async with asyncio.timeout(HANG_S), asyncio.TaskGroup() as tasks:
        for agent in devices:
            tasks.create_task(agent.run())
        replicas = {name: await start_replica(broker.url, tmp_path, name) for name in ("r1", "r2")}
        await until_serving(broker, victim, 2, replicas, tmp_path)
        round_2_out = asyncio.ensure_future(model_out(broker, 2))
        await asyncio.sleep(0)  # subscribed before the kill
        replicas[victim].send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        assert await replicas[victim].wait() == -signal.SIGKILL
        recovered_s = await round_2_out - killed
        assert await replicas[survivor].wait() == 0, (tmp_path / f"{survivor}.log").read_text()
    report = read_report(tmp_path / f"{survivor}.json")
    return report, recovered_s, devices


def typical_round_s(report: dict[str, Any]) -> float:
    """The slowest round but round 2 (the one with the fault)."""
    return max(float(r["duration_s"]) for r in report["rounds"] if r["round"] != 2)


def assert_every_step_counted_once(report: dict[str, Any]) -> None:
    """Every round lists every device ok with exactly its planned batches: the killed
    replica's steps of round 2 died with it, the repeat's are the ones in the model."""
    assert [r["round"] for r in report["rounds"]] == list(range(1, FAULT_ROUNDS + 1))
    for entry in report["rounds"]:
        devices = entry["devices"]
        assert sorted(devices) == [f"dev-{i}" for i in range(DEVICES)], entry["round"]
        for device_id, outcome in devices.items():
            assert outcome["status"] == "ok", (entry["round"], device_id, outcome)
            assert outcome["batches"] == FAULT_BATCHES, (entry["round"], device_id, outcome)


async def test_a_replica_killed_mid_round_its_devices_repeat_the_round_elsewhere(
    mosquitto, tmp_path
):
    report, since_kill_s, devices = await run_with_a_kill(mosquitto, tmp_path, "r2")
    print(f"replica killed: round 2's model out {since_kill_s:.2f} s after the kill; other "
          f"rounds took {typical_round_s(report):.2f} s")  # fmt: skip
    assert_every_step_counted_once(report)
    assert report["counters"]["cluster.replicas_lost"] == 1
    assert report["final_accuracy"] > report["initial_accuracy"] + 0.2
    assert all(agent.rounds_done >= FAULT_ROUNDS for agent in devices)
    log = (tmp_path / "r1.log").read_text()
    assert "round 2: replica r2 lost" in log
    assert "round 2 attempt 1: r1 serves" in log


async def test_the_coordinator_killed_another_replica_takes_the_role_over(mosquitto, tmp_path):
    report, since_kill_s, devices = await run_with_a_kill(mosquitto, tmp_path, "r1")
    print(f"coordinator killed: round 2's model out {since_kill_s:.2f} s after the kill; "
          f"other rounds took {typical_round_s(report):.2f} s")  # fmt: skip
    # r2's report is the run's: round 1 from the retained report r1 left, the rest its own.
    assert_every_step_counted_once(report)
    (took_over,) = report["resumed"]
    assert took_over["after_round"] == 1
    assert report["final_accuracy"] > report["initial_accuracy"] + 0.2
    assert all(agent.rounds_done >= FAULT_ROUNDS for agent in devices)
    log = (tmp_path / "r2.log").read_text()
    assert "replica r2 holds the coordinator role (epoch 2)" in log
    assert "round 2 attempt 1: r2 serves 4" in log


# --- a site cut off: replicas at the core, devices behind bridged site brokers -------------------

CUT_S = 30.0
SITE_DEVICES = {"site-1": ("dev-0", "dev-1"), "site-2": ("dev-2", "dev-3")}


async def test_a_site_cut_off_for_30_s_catches_up_and_loses_nothing(tmp_path):
    """site-2's WAN link to the core is cut for 30 s in round 2: its devices' activations
    queue at its broker, the gradients for them at the core (the bridge's persistent session),
    and when the link returns they flow and the round ends with every part."""
    async with LocalSites(tmp_path / "brokers", SITE_DEVICES, wan=["site-2"]) as sites:
        common: dict[str, Any] = dict(
            mqtt=sites.edge_mqtt(), rounds=3, min_devices=DEVICES, policy="sl", split=2,
            batches_per_round=6, batch_size=16,
            # The cut must not look like a dead device: a silent device leaves a round after
            # 3 batch timeouts, and the round waits for the parts past the cut.
            batch_timeout_s=25, deadline_floor_s=120, round_timeout_s=300,
        )  # fmt: skip
        edges = [
            EdgeService(edge_settings_for(name, site, common))
            for name, site in (("r1", "site-1"), ("r2", "site-2"))
        ]
        for edge in edges:
            await edge.start_up()
        devices = [
            DeviceAgent(device_settings_at(sites.device_mqtt(device), device, site))
            for site, names in SITE_DEVICES.items()
            for device in names
        ]
        wan = sites.wans["site-2"]
        async with asyncio.timeout(HANG_S), asyncio.TaskGroup() as tasks:
            for agent in devices:
                tasks.create_task(agent.run())
            running = [tasks.create_task(edge.run()) for edge in edges]
            await wait_until(lambda: any(e.round_no == 2 and e.current_round for e in edges),
                             timeout_s=HANG_S)  # fmt: skip
            await wan.cut()
            await asyncio.sleep(CUT_S)  # the fault itself lasts 30 s, by the clock
            restored = time.perf_counter()
            await wan.restore()
            await asyncio.gather(*running)
        caught_up_s = time.perf_counter() - restored
    coordinator = next(e for e in edges if e.cluster is not None and e.cluster.coordinated)
    report = coordinator.report
    for entry in report.rounds:
        assert {d: r.status for d, r in entry.devices.items()} == dict.fromkeys(
            [f"dev-{i}" for i in range(DEVICES)], "ok"
        ), entry.round
        assert all(r.batches == 6 for r in entry.devices.values()), entry.round
    # Locality: each replica served its own site's two devices, every round.
    for edge in edges:
        assert edge.counters.snapshot()["batches"] == 2 * 6 * 3
    durations = [r.duration_s for r in report.rounds]
    assert durations[1] >= CUT_S
    print(f"site cut for {CUT_S:.0f} s in round 2: round 2 took {durations[1]:.1f} s "
          f"(others {durations[0]:.1f}, {durations[2]:.1f} s); the run ended "
          f"{caught_up_s:.1f} s after the link came back")  # fmt: skip


def edge_settings_for(name: str, site: str, common: dict[str, Any]) -> Any:
    return EdgeSettings(
        replica=name, site=site, checkpoint=None, torch_threads=1, registration_timeout_s=HANG_S,
        profile_timeout_s=HANG_S, **common,
    )  # fmt: skip


def device_settings_at(settings: MqttSettings, device: str, site: str) -> DeviceSettings:
    index = int(device.removeprefix("dev-"))
    return DeviceSettings(
        mqtt=settings, device_id=device, site=site, shard_index=index, num_shards=DEVICES,
        exit_on_finish=True, torch_threads=1,
    )  # fmt: skip
