"""``ares serve`` and ``ares device --serve`` as the processes they run as: the edge answers
through the device until it is killed (SIGKILL: no goodbye, only its MQTT will); then the
device answers alone at once, flagged degraded; SIGTERM stops the device cleanly."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import torch

from schemas import Topics
from schemas.serving import ServeAnswer
from schemas.topics import ServeChannel
from tests.integration.helpers import HANG_S, mqtt
from tests.integration.test_serving import json_request
from tests.serving.artifacts import digits_test_set, make_artifact
from transport import MqttLink

TOPICS = Topics()


async def _spawn(*argv: str, log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as output:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ares", *argv,
            stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip


async def _next_answer(link: MqttLink, request_id: str) -> ServeAnswer:
    while True:
        message = await link.receive()
        if message.topic.endswith(ServeChannel.ANSWER.value):
            answer = ServeAnswer.model_validate_json(message.payload)
            if answer.id == request_id:
                return answer


async def test_a_killed_edge_leaves_the_device_answering_alone(mosquitto, tmp_path):
    torch.set_num_threads(1)
    model = tmp_path / "model.ares"
    make_artifact(model)
    sample = digits_test_set().x[0]
    broker = ["--broker", mosquitto.url, "--torch-threads", "1"]
    edge = await _spawn("serve", "--artifact", str(model), "--policy", "edge", *broker,
                        log=tmp_path / "edge.log")  # fmt: skip
    device = await _spawn("device", "--serve", "--artifact", str(model), "--id", "dev-0",
                          *broker, log=tmp_path / "device.log")  # fmt: skip
    watched = [
        (TOPICS.device("dev-0", ServeChannel.ANSWER), 1),
        (TOPICS.serve_status, 1),
    ]
    try:
        async with MqttLink(mqtt(mosquitto), "test-app", watched) as app:
            async with asyncio.timeout(HANG_S):
                # Until both processes are up and the plan (cut 0: all on the edge) is in force.
                for attempt in range(10_000):
                    await app.publish(
                        TOPICS.device("dev-0", ServeChannel.REQUEST),
                        json_request(f"warm-{attempt}", sample, deadline_ms=2000),
                    )
                    try:
                        async with asyncio.timeout(0.5):
                            warm = await _next_answer(app, f"warm-{attempt}")
                    except TimeoutError:
                        continue
                    if warm.where == "edge":
                        break
                assert warm.cut == 0
                assert not warm.degraded
                edge.send_signal(signal.SIGKILL)
                await edge.wait()
                while True:  # the edge's will, published by the broker
                    message = await app.receive()
                    if (
                        message.topic == TOPICS.serve_status
                        and message.payload
                        and json.loads(message.payload)["state"] == "offline"
                    ):
                        break
                await asyncio.sleep(0.2)  # the device reads the same will
                await app.publish(
                    TOPICS.device("dev-0", ServeChannel.REQUEST),
                    json_request("after", sample, deadline_ms=5000),
                )
                after = await _next_answer(app, "after")
        device.send_signal(signal.SIGTERM)
        async with asyncio.timeout(HANG_S):
            assert await device.wait() == 0
    finally:
        for process in (edge, device):
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert after.degraded
    assert after.where == "device"
    assert after.reason == "the edge is offline"
    assert after.latency_ms is not None
    assert after.latency_ms < 1000, "answered alone at once, not at the deadline"
