"""The serving device on the in-memory broker, on an emulated board: it declares the board's
timings and power, paces each answer to the blocks it ran, and reports its window."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from device_agent.host import HostBoard, SysfsPowerMeter, UnshapedLink
from device_agent.ports import BatteryReading, Environment, Pace
from schemas import PowerFigures, Topics, to_json
from schemas.serving import (
    ServeAnswer,
    ServeCtrl,
    ServeEdgeStatus,
    ServeHello,
    ServeTelemetry,
)
from schemas.topics import ServeChannel
from serving.artifact import ModelArtifact
from serving.device import ServingDevice
from serving.settings import ServingDeviceSettings
from tests.integration.helpers import wait_until
from tests.serving.artifacts import digits_test_set, make_artifact
from tests.serving.running import running
from transport import MemoryBroker, MemoryLink

TOPICS = Topics()
SLOWER = 50.0  # the emulated board's blocks take this many times the host's


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelArtifact]:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("device") / "model.ares"
    return path, make_artifact(path)


class SlowBoard(HostBoard):
    emulates_compute = True

    def __init__(self) -> None:
        self.paced: list[Pace] = []

    def power(self) -> PowerFigures | None:
        return PowerFigures(compute_w=4.0, transmit_w=1.0, receive_w=0.5)

    def block_times(
        self, forward_s: tuple[float, ...], backward_s: tuple[float, ...], batch: int, model: str
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return tuple(t * SLOWER for t in forward_s), backward_s

    async def pad(self, pace: Pace, started: float) -> float:
        self.paced.append(pace)
        return 0.0


class Battery:
    def __init__(self) -> None:
        self.accounted: list[tuple[float, float, float]] = []

    def reading(self) -> BatteryReading | None:
        return BatteryReading(percent=80.0, charging=False, power_w=None)

    def account(self, busy_s: float, uplink_s: float, downlink_s: float) -> None:
        self.accounted.append((busy_s, uplink_s, downlink_s))


@contextlib.asynccontextmanager
async def serving_device(
    path: Path, environment: Environment
) -> AsyncIterator[tuple[ServingDevice, MemoryLink]]:
    broker = MemoryBroker()
    settings = ServingDeviceSettings(device_id="cam-0", artifact=path, torch_threads=1,
                                     telemetry_interval_s=3600, deadline_ms=10_000)  # fmt: skip
    device = ServingDevice(settings, environment=environment, connect=broker.connect)
    own = [(TOPICS.device("cam-0", c), 1) for c in (ServeChannel.ANSWER, ServeChannel.HELLO,
                                                    ServeChannel.TELEMETRY)]  # fmt: skip
    async with broker.connect("edge-and-app", own) as link, running(device):
        yield device, link


async def next_on(link: MemoryLink, channel: ServeChannel) -> bytes:
    async with asyncio.timeout(30):
        async for message in link.messages():
            if message.topic.endswith(channel.value):
                return message.payload
    raise AssertionError("the link closed")


def request(request_id: str) -> bytes:
    return json.dumps({"id": request_id, "input": digits_test_set().x[0].tolist()}).encode()


async def test_an_emulated_device_declares_and_paces_its_board(model_file):
    path, artifact = model_file
    board, battery = SlowBoard(), Battery()
    environment = Environment(board, battery, SysfsPowerMeter(Path("/nonexistent")), UnshapedLink())
    async with serving_device(path, environment) as (device, link):
        status = ServeEdgeStatus(session="e-1", state="serving")
        await link.publish(TOPICS.serve_status, to_json(status), retain=True)
        hello = ServeHello.model_validate_json(await next_on(link, ServeChannel.HELLO))
        # Without a plan: answered alone, from the deepest exit (4), paced as 4 blocks.
        await link.publish(TOPICS.device("cam-0", ServeChannel.REQUEST), request("alone"))
        alone = ServeAnswer.model_validate_json(await next_on(link, ServeChannel.ANSWER))
        # A plan with the exits on at threshold 0: the first exit answers, paced as 1 block.
        ctrl = ServeCtrl(session="e-1", device_id="cam-0", fingerprint=artifact.fingerprint,
                         cut=3, threshold=0.0)  # fmt: skip
        await link.publish(TOPICS.device("cam-0", ServeChannel.CTRL), to_json(ctrl), retain=True)
        await wait_until(lambda: device.plan is not None, 30)
        await link.publish(TOPICS.device("cam-0", ServeChannel.REQUEST), request("exit"))
        early = ServeAnswer.model_validate_json(await next_on(link, ServeChannel.ANSWER))
        await link.publish(TOPICS.device("cam-0", ServeChannel.REQUEST), request("exit"))
        await wait_until(lambda: device.counters["duplicate"] == 1, 30)
        await device.publish_telemetry()
        telemetry = ServeTelemetry.model_validate_json(await next_on(link, ServeChannel.TELEMETRY))
    assert hello.power == PowerFigures(compute_w=4.0, transmit_w=1.0, receive_w=0.5)
    assert hello.profile == "host"
    assert hello.battery_pct == 80.0
    assert len(hello.forward_s) == 5
    assert sorted(hello.exit_s) == [1, 2, 3, 4]
    assert (alone.degraded, alone.exit, early.degraded, early.exit) == (True, 4, False, 1)
    assert [dataclasses.astuple(p) for p in board.paced] == [
        (("forward",), 4, 1, "small_cnn"),
        (("forward",), 1, 1, "small_cnn"),
    ]
    assert (telemetry.requests, telemetry.exited, telemetry.degraded) == (2, 1, 1)
    assert telemetry.duplicates == 1
    assert telemetry.exit_rate == 1.0  # the one request the plan ran left at its exit
    assert (telemetry.cut, telemetry.threshold) == (3, 0.0)
    assert telemetry.latency_ms_p99 is not None
    assert telemetry.battery_pct == 80.0
    assert len(battery.accounted) == 1
    assert battery.accounted[0][0] > 0  # the window's compute drains the emulated battery


async def test_settings_that_ask_for_emulation_need_their_environment(model_file):
    path, _ = model_file
    settings = ServingDeviceSettings(device_id="cam-0", artifact=path, profile="raspberry-pi-3b+")
    with pytest.raises(ValueError, match="emulat"):
        ServingDevice(settings)
