"""The serving edge on the in-memory broker: it plans for the devices that arrive, re-plans when
their readings move (not for noise) and when they leave, finishes good activations and refuses
bad ones with a reason and a count."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch

from schemas import Topics, encode_frame, to_json, to_meta
from schemas.serving import (
    ServeActMeta,
    ServeCtrl,
    ServeDeviceStatus,
    ServeHello,
    ServePlanMessage,
    ServeResult,
    ServeTelemetry,
)
from schemas.topics import ServeChannel
from serving.artifact import ModelArtifact
from serving.edge import ServeEdge
from serving.inference import EdgeModel
from serving.settings import ServeSettings
from tests.integration.helpers import wait_until
from tests.serving.artifacts import SPEC, digits_test_set, make_artifact
from tests.serving.running import running
from transport import MemoryBroker, MemoryLink

TOPICS = Topics()
BLOCKS = 5


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelArtifact]:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("edge") / "model.ares"
    return path, make_artifact(path)


def hello(artifact: ModelArtifact, device_id: str = "cam-0", **changes: object) -> bytes:
    fields: dict[str, object] = dict(
        device_id=device_id, instance="i-1", fingerprint=artifact.fingerprint,
        model=SPEC.name, forward_s=(0.002,) * BLOCKS, exit_s={1: 0.0001, 2: 0.0001},
    )  # fmt: skip
    return to_json(ServeHello.model_validate({**fields, **changes}))


@contextlib.asynccontextmanager
async def serving_edge(
    path: Path, **changes: object
) -> AsyncIterator[tuple[ServeEdge, MemoryLink]]:
    broker = MemoryBroker()
    settings = ServeSettings.model_validate(
        {"artifact": path, "torch_threads": 1, "status_interval_s": 60, **changes}
    )
    edge = ServeEdge(settings, connect=broker.connect)
    watch = [(TOPICS.all_devices(c), 1) for c in (ServeChannel.RESULT, ServeChannel.CTRL)]
    plan = (TOPICS.serve_plan, 1)
    async with broker.connect("cam-0", [*watch, plan]) as device, running(edge):
        yield edge, device


async def next_on(link: MemoryLink, suffix: str) -> bytes:
    async with asyncio.timeout(30):
        async for message in link.messages():
            if message.topic.endswith(suffix):
                return message.payload
    raise AssertionError("the link closed")


async def test_a_device_that_arrives_gets_its_plan(model_file):
    path, artifact = model_file
    async with serving_edge(path, policy="sl-best") as (edge, device):
        await device.publish(TOPICS.device("cam-0", ServeChannel.HELLO), hello(artifact))
        plan = ServePlanMessage.model_validate_json(await next_on(device, "serve/plan"))
        ctrl = ServeCtrl.model_validate_json(await next_on(device, "serve/ctrl"))
    entry = plan.devices["cam-0"]
    assert (plan.policy, plan.version, plan.reason) == ("sl-best", 1, "cam-0 arrived")
    assert entry.threshold is None  # sl-best: no exits
    assert (ctrl.cut, ctrl.threshold, ctrl.session) == (entry.cut, None, edge.session)
    assert ctrl.fingerprint == artifact.fingerprint
    assert entry.reason
    assert entry.inputs == "compute measured; link assumed; power assumed"
    assert plan.full_accuracy == pytest.approx(artifact.calibration.full_accuracy)


async def test_another_model_gets_no_plan(model_file):
    path, artifact = model_file
    async with serving_edge(path) as (edge, device):
        await device.publish(
            TOPICS.device("cam-0", ServeChannel.HELLO), hello(artifact, fingerprint="0" * 16)
        )
        cleared = await next_on(device, "serve/ctrl")  # an earlier edge's plan, withdrawn
    assert cleared == b""
    assert edge.counters["other_model"] == 1
    assert edge.plans == []


async def test_readings_that_move_re_plan_and_noise_does_not(model_file):
    path, artifact = model_file
    telemetry = TOPICS.device("cam-0", ServeChannel.TELEMETRY)
    async with serving_edge(path, policy="ares") as (edge, device):
        await device.publish(TOPICS.device("cam-0", ServeChannel.HELLO), hello(artifact))
        await wait_until(lambda: len(edge.plans) == 1, 30)
        noise = ServeTelemetry(device_id="cam-0", window_s=1, uplink_bps=21e6)  # assumed: 20
        await device.publish(telemetry, to_json(noise))
        drop = ServeTelemetry(device_id="cam-0", window_s=1, uplink_bps=1e6)
        await device.publish(telemetry, to_json(drop))
        await wait_until(lambda: len(edge.plans) == 2, 30)
        await device.publish(
            TOPICS.device("cam-0", ServeChannel.STATUS),
            to_json(ServeDeviceStatus(device_id="cam-0", state="offline")),
        )
        await wait_until(lambda: len(edge.plans) == 3, 30)
    assert "uplink moved from 20 to 1 Mbit/s" in edge.plans[1].reason
    assert "link measured" in edge.plans[1].devices["cam-0"].inputs
    assert edge.plans[2].reason == "cam-0 left"
    assert edge.plans[2].devices == {}


async def test_activations_are_finished_and_bad_ones_refused(model_file):
    path, artifact = model_file
    sample = digits_test_set().x[:1]
    act_topic = TOPICS.device("cam-0", ServeChannel.ACT)
    model = EdgeModel(artifact.build_model(), SPEC)
    shape = model.shapes[2]

    def act(request_id: str, tensor: np.ndarray, cut: int = 2, device_id: str = "cam-0") -> bytes:
        meta = ServeActMeta(device_id=device_id, id=request_id, cut=cut, session="s")
        return encode_frame(to_meta(meta), {"act": tensor})

    good = np.asarray(artifact.build_model()[:2](torch.from_numpy(sample)).detach())
    bad = {
        "shape": (act("shape", np.zeros((1, 3), np.float32)), "bad_shape"),
        "cut": (act("cut", good, cut=BLOCKS), "bad_cut"),
        "nan": (act("nan", np.full((1, *shape), np.nan, np.float32)), "not_finite"),
        "ints": (act("ints", np.zeros((1, *shape), np.int32)), "bad_dtype"),
        "who": (act("who", good, device_id="cam-9"), "id_mismatch"),
    }
    async with serving_edge(path) as (edge, device):
        await device.publish(act_topic, b"\x93garbage")  # no id to answer: counted only
        for payload, _ in bad.values():
            await device.publish(act_topic, payload)
        await device.publish(act_topic, act("good", good))
        results: dict[str, ServeResult] = {}
        while len(results) < len(bad) + 1:
            result = ServeResult.model_validate_json(await next_on(device, "serve/result"))
            results[result.id] = result
    for key, (_, reason) in bad.items():
        assert results[key].error == reason, results[key]
        assert results[key].label is None
    assert results["good"].error is None
    assert results["good"].label == model.finish(2, [good])[0].label
    assert edge.counters["rejected"] == len(bad) + 1
    assert edge.counters["rejected.malformed"] == 1
    assert edge.counters["results"] == 1
