"""Split learning end to end through a real Mosquitto, with real torch training."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
import torch
from torch import nn

from device_agent import DeviceAgent
from edge_service import EdgeService
from schemas import Topics
from splitnn.data import BatchStream
from splitnn.datasets import load_dataset, shard
from splitnn.models import ModelSpec, build_model, num_blocks
from tests.integration.helpers import device_settings, edge_settings, mqtt, train, wait_until
from transport import MqttLink


def centralised_training(spec: ModelSpec, seed: int, data_seed: int, rounds: int, settings) -> dict:
    """Ordinary training of the whole model, same initial weights, data order and optimiser."""
    torch.manual_seed(seed)
    model = build_model(spec)
    full = load_dataset(settings.dataset, "train", seed=seed)
    data = shard(full, 1, 0, scheme="iid", seed=seed)
    stream = BatchStream(len(data), settings.batch_size, data_seed)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(rounds):
        # Both sides start each round with fresh optimiser state, as the edge does.
        optimizer = torch.optim.SGD(
            model.parameters(), lr=settings.lr, momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )  # fmt: skip
        batches = settings.batches_per_round or math.ceil(len(data) / settings.batch_size)
        for _ in range(batches):
            index = stream.next_batch()
            x, y = torch.from_numpy(data.x[index]), torch.from_numpy(data.y[index])
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    return model.state_dict()


@pytest.mark.parametrize(
    ("model", "dataset", "split"),
    [
        ("small_cnn", "digits", 1),
        ("small_cnn", "digits", 3),
        ("small_cnn", "digits", 5),  # every block on the device: federated learning
        ("vgg5", "synthetic", 3),  # BatchNorm on both sides of the cut
    ],
)
async def test_one_device_matches_centralised_training(mosquitto, model, dataset, split):
    settings = edge_settings(
        mosquitto, model=model, dataset=dataset, split=split, rounds=2, seed=7,
        batches_per_round=6 if model == "vgg5" else None,
        weight_wire="float32",  # exact weights: the default int8 deltas round them
    )  # fmt: skip
    edge = EdgeService(settings)
    agent = DeviceAgent(device_settings(mosquitto, 0, 1, seed=7, dataset=dataset))
    report = await train(edge, [agent])

    assert [r.devices["dev-0"].status for r in report.rounds] == ["ok", "ok"]
    expected = centralised_training(edge.spec, 7, agent.trainer.device_trainer.seed, 2, settings)
    assert set(edge.global_state) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(edge.global_state[name], value, rtol=1e-4, atol=1e-5)
    assert report.counters.get("duplicate_batches", 0) == 0


async def test_three_devices_learn_well_above_chance(mosquitto):
    settings = edge_settings(
        mosquitto, rounds=5, batch_size=16, min_devices=3, splits={"dev-0": 1, "dev-2": 4}
    )
    edge = EdgeService(settings)
    agents = [DeviceAgent(device_settings(mosquitto, i, 3)) for i in range(3)]
    report = await train(edge, agents)

    assert len(report.rounds) == 5
    last = report.rounds[-1]
    assert {d: r.cut for d, r in last.devices.items()} == {"dev-0": 1, "dev-1": 2, "dev-2": 4}
    # Devices train on disjoint shards that together cover the training set.
    samples = sum(r.samples for r in last.devices.values())
    assert samples == len(load_dataset("digits", "train"))
    assert all(r.status == "ok" for r in last.devices.values())
    assert report.initial_accuracy is not None
    assert report.initial_accuracy < 0.2
    assert report.final_accuracy is not None
    assert report.final_accuracy > 0.85  # chance is 0.1
    assert not any(k.startswith("rejected") for k in report.counters)


async def test_float16_on_the_wire_trains_as_well_as_float32(mosquitto):
    accuracies = {}
    for wire_dtype in ("float32", "float16"):
        settings = edge_settings(
            mosquitto, rounds=4, batch_size=16, split=2, wire_dtype=wire_dtype,
            client_id=f"edge-{wire_dtype}",
        )  # fmt: skip
        edge = EdgeService(settings)
        agent = DeviceAgent(device_settings(mosquitto, 0, 1))
        report = await train(edge, [agent])
        assert report.final_accuracy is not None
        accuracies[wire_dtype] = report.final_accuracy
    assert accuracies["float32"] > 0.85
    assert abs(accuracies["float16"] - accuracies["float32"]) < 0.03, accuracies


async def test_ares_policy_gives_devices_their_own_cuts_and_publishes_the_plan(mosquitto):
    settings = edge_settings(mosquitto, policy="ares", alpha=1.0, rounds=2, min_devices=2)
    edge = EdgeService(settings)
    agents = [
        # A link too slow for activations, and a gigabit one to a much faster edge.
        DeviceAgent(device_settings(mosquitto, 0, 2, uplink_mbps=0.05)),
        DeviceAgent(device_settings(mosquitto, 1, 2, uplink_mbps=1000.0)),
    ]
    plans: list[dict] = []
    async with MqttLink(mqtt(mosquitto), "watcher", [(Topics().edge_plan, 1)]) as watcher:

        async def collect() -> None:
            while True:
                plans.append(json.loads((await watcher.receive()).payload))

        collector = asyncio.create_task(collect())
        report = await train(edge, agents)
        # Each round's plan was published before its round: wait until all are here.
        await wait_until(lambda: {p["round"] for p in plans} >= {r.round for r in report.rounds})
        collector.cancel()

    assert report.policy == "ares"
    last = report.rounds[-1].devices
    assert last["dev-0"].cut == num_blocks(edge.spec)  # nothing crosses the slow link
    assert last["dev-0"].predicted_time_s > 0
    assert last["dev-0"].predicted_energy_j > 0
    assert plans
    assert plans[-1]["policy"] == "ares"
    assert plans[-1]["devices"]["dev-0"]["cut"] == last["dev-0"].cut
    assert "measured" in plans[-1]["devices"]["dev-0"]["inputs"]
    # Round 1 plans with what dev-1 declared; later rounds with what it measured on its link.
    assert "link declared" in plans[0]["devices"]["dev-1"]["inputs"]
    assert "link measured" in plans[-1]["devices"]["dev-1"]["inputs"]
