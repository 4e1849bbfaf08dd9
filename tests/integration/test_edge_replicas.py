"""Several edge replicas on one broker: one training run, the coordinator's plan and merged
model, and the faults (a replica killed mid-round, the coordinator killed), for real: Mosquitto,
MQTT clients, torch training; the killed replicas are processes killed with SIGKILL."""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from broker import LocalBroker
from device_agent import DeviceAgent
from edge_service import EdgeService
from tests.integration.helpers import HANG_S, device_settings, edge_settings, mqtt

DEVICES = 4
ROUNDS = 3


def replica_settings(broker: LocalBroker, name: str | None, prefix: str, **changes: Any) -> Any:
    """A replica named ``name`` (None: the only edge) on the topics under ``prefix``."""
    return edge_settings(
        broker,
        mqtt=mqtt(broker, prefix=prefix),
        replica=name,
        rounds=ROUNDS,
        min_devices=DEVICES,
        split=2,
        batches_per_round=4,
        batch_size=16,
        **changes,
    )


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
    for key, tensor in one.global_state.items():
        other = coordinator.global_state[key]
        if tensor.is_floating_point():
            torch.testing.assert_close(other, tensor, rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(other, tensor), key
    assert report.final_accuracy == one.report.final_accuracy
