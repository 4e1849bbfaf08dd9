"""Garbage on every topic the edge listens on is rejected, counted, reported; training goes on."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import numpy as np

from device_agent import DeviceAgent
from edge_service import EdgeService
from schemas import ActivationMeta, DeviceChannel, Topics, encode_frame, to_meta
from schemas.topics import DEVICE_TO_EDGE
from tests.integration.helpers import device_settings, edge_settings, mqtt, train
from transport import MqttLink

GARBAGE = [
    b"\x00",
    b"not json",
    b"{}",
    json.dumps({"v": 1, "kind": "hello"}).encode(),
    b"\xc1" * 64,
]


async def _attack(link: MqttLink, stop: asyncio.Event) -> int:
    """Keep publishing garbage, as both a registered and an unknown device, until told to stop."""
    topics = Topics()
    sent = 0
    forged = encode_frame(
        to_meta(ActivationMeta(device_id="dev-1", round=1, seq=0)),
        {"act": np.full((4, 16, 8, 8), np.nan, np.float32), "labels": np.zeros(4, np.int64)},
    )
    while not stop.is_set():
        for device_id in ("dev-0", "intruder"):
            for channel in DEVICE_TO_EDGE:
                if channel is DeviceChannel.STATUS and device_id == "dev-0":
                    continue  # a forged "offline" would legitimately drop dev-0
                for payload in [*GARBAGE, forged]:
                    await link.publish(topics.device(device_id, channel), payload)
                    sent += 1
        await asyncio.sleep(0.05)
    return sent


async def test_garbage_everywhere_is_rejected_and_training_completes(mosquitto):
    edge = EdgeService(edge_settings(mosquitto, rounds=3, batch_size=16))
    agent = DeviceAgent(device_settings(mosquitto, 0, 1))
    errors: list[dict] = []
    stop = asyncio.Event()
    error_topic = Topics().device("dev-0", DeviceChannel.ERROR)
    async with MqttLink(mqtt(mosquitto), "attacker", [(error_topic, 1)]) as link:
        attack = asyncio.create_task(_attack(link, stop))
        report = await train(edge, [agent])
        stop.set()
        sent = await attack
        while True:
            try:
                message = await asyncio.wait_for(link.receive(), 0.5)
            except TimeoutError:
                break
            errors.append(json.loads(message.payload))

    assert sent > 100
    assert len(report.rounds) == 3
    assert all(r.devices["dev-0"].status == "ok" for r in report.rounds)
    assert report.final_accuracy is not None
    assert report.final_accuracy > 0.7
    rejected = Counter({k: v for k, v in report.counters.items() if k.startswith("rejected.")})
    assert rejected["rejected.bad_json"] > 0
    assert rejected["rejected.unknown_device"] > 0
    assert rejected["rejected.malformed"] + rejected["rejected.truncated"] > 0
    assert rejected["rejected.bad_schema"] > 0
    assert rejected["rejected.id_mismatch"] > 0  # dev-0's topic, dev-1 in the payload
    assert errors, "the device's error topic received no report"
    assert {e["reason"] for e in errors} <= {k.removeprefix("rejected.") for k in rejected}
    # Every batch the device sent was applied exactly once.
    batches = sum(r.devices["dev-0"].batches for r in report.rounds)
    assert batches == 3 * agent.trainer.device_trainer.batches_per_round(16)
