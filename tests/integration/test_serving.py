"""Serving through a real Mosquitto: answers at the edge and at an exit match the model; the
device answers alone, flagged degraded, within its deadline when the edge is gone or silent;
repeated ids are answered once; bad requests get error answers; a dropped image is answered
once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from broker import LocalBroker
from planner.inference import EXITS_OFF, InferencePlan, ServingInputs, Setting, plan_for_settings
from schemas import Topics, encode_frame, to_json
from schemas.serving import ServeAnswer, ServeCtrl, ServeEdgeStatus
from schemas.topics import ServeChannel
from serving.artifact import ModelArtifact
from serving.device import ServingDevice
from serving.edge import ServeEdge
from serving.settings import ServeSettings, ServingDeviceSettings
from splitnn.datasets.images import decode_image
from tests.integration.helpers import mqtt, wait_until
from tests.serving.artifacts import digits_test_set, exit_labels, make_artifact, unsplit_labels
from tests.serving.running import HANG_S, running
from transport import MqttLink

TOPICS = Topics()
FIRST_EXIT, DEEPEST_EXIT = 1, 4


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelArtifact]:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("serving") / "model.ares"
    return path, make_artifact(path)


def device(broker: LocalBroker, path: Path, device_id: str, **changes: Any) -> ServingDevice:
    fields: dict[str, Any] = dict(
        mqtt=mqtt(broker),
        device_id=device_id,
        artifact=path,
        torch_threads=1,
        deadline_ms=10_000,
        telemetry_interval_s=0.5,
    )
    return ServingDevice(ServingDeviceSettings(**{**fields, **changes}))


def edge(broker: LocalBroker, path: Path, settings: Mapping[str, Setting]) -> ServeEdge:
    """A serving edge whose plan is ``settings`` (cut, threshold) per device; a threshold of
    0 (not in any calibration table) is planned at 0.5 and sent as 0."""

    def decide(inputs: ServingInputs) -> InferencePlan:
        tabled = {d: (cut, t if t else 0.5) for d, (cut, t) in settings.items()}
        plan = plan_for_settings(inputs, tabled, reason="test plan")
        assignments = tuple(
            dataclasses.replace(a, threshold=settings[a.device_id][1]) for a in plan.assignments
        )
        return dataclasses.replace(plan, assignments=assignments)

    serve = ServeSettings(mqtt=mqtt(broker), artifact=path, torch_threads=1, status_interval_s=1)
    return ServeEdge(serve, decide=decide)


class App:
    """An application on the device: publishes requests, collects the answers by id."""

    def __init__(self, link: MqttLink) -> None:
        self.link = link
        self.answers: dict[str | None, list[ServeAnswer]] = {}

    async def collect(self) -> None:
        async for message in self.link.messages():
            answer = ServeAnswer.model_validate_json(message.payload)
            self.answers.setdefault(answer.id, []).append(answer)

    async def ask(self, device_id: str, payload: bytes) -> None:
        await self.link.publish(TOPICS.device(device_id, ServeChannel.REQUEST), payload)

    async def answer(self, request_id: str | None, count: int = 1) -> ServeAnswer:
        await wait_until(lambda: len(self.answers.get(request_id, ())) >= count, HANG_S)
        return self.answers[request_id][count - 1]


@contextlib.asynccontextmanager
async def app(broker: LocalBroker, *device_ids: str) -> AsyncIterator[App]:
    topics = [(TOPICS.device(d, ServeChannel.ANSWER), 1) for d in device_ids]
    async with MqttLink(mqtt(broker), "test-app", topics) as link:
        client = App(link)
        reader = asyncio.create_task(client.collect())
        try:
            yield client
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def json_request(request_id: str, sample: np.ndarray, **extra: Any) -> bytes:
    return json.dumps({"id": request_id, "input": sample.tolist(), **extra}).encode()


def frame_request(request_id: str, sample: np.ndarray, **extra: Any) -> bytes:
    return encode_frame({"kind": "request", "id": request_id, **extra}, {"input": sample})


async def test_edge_and_exit_answers_match_the_model(mosquitto, model_file):
    path, artifact = model_file
    samples = digits_test_set().x[:12]
    plan = {"dev-0": (2, EXITS_OFF), "dev-1": (3, 0.0), "dev-2": (0, EXITS_OFF)}
    devices = [device(mosquitto, path, d) for d in plan]
    the_edge = edge(mosquitto, path, plan)
    async with running(the_edge, *devices), app(mosquitto, *plan) as client:
        await wait_until(lambda: all(d.plan is not None for d in devices), HANG_S)
        for i, sample in enumerate(samples):
            await client.ask("dev-0", json_request(f"a{i}", sample))
            await client.ask("dev-1", frame_request(f"b{i}", sample))
            await client.ask("dev-2", frame_request(f"c{i}", sample[None]))  # a batch of one
        at_edge = [await client.answer(f"a{i}") for i in range(len(samples))]
        at_exit = [await client.answer(f"b{i}") for i in range(len(samples))]
        raw = [await client.answer(f"c{i}") for i in range(len(samples))]
        # The devices' telemetry reaches the edge: the exit rates the next plan starts from.
        records = the_edge.fleet.records

        def observed(device_id: str) -> tuple[object, ...] | None:
            seen = records[device_id].observed
            return (seen.cut, seen.threshold, seen.requests, seen.fraction) if seen else None

        await wait_until(lambda: observed("dev-0") == (2, None, len(samples), 0.0))
        await wait_until(lambda: observed("dev-1") == (3, 0.0, len(samples), 1.0))
    expected = unsplit_labels(artifact, samples).tolist()
    for answers, cut in ((at_edge, 2), (raw, 0)):
        assert [a.label for a in answers] == expected
        assert all(a.where == "edge" and a.exit is None and a.cut == cut for a in answers)
        assert not any(a.degraded or a.error for a in answers)
    assert [a.label for a in at_exit] == exit_labels(artifact, FIRST_EXIT, samples).tolist()
    assert all(a.where == "device" and a.exit == FIRST_EXIT and not a.degraded for a in at_exit)
    names = artifact.labels
    assert all(a.label_name == (names[a.label] if names else None) for a in at_edge + at_exit)


async def test_without_an_edge_the_device_answers_alone(mosquitto, model_file):
    path, artifact = model_file
    samples = digits_test_set().x[:5]
    serving = device(mosquitto, path, "dev-0")
    async with running(serving), app(mosquitto, "dev-0") as client:
        for i, sample in enumerate(samples):
            await client.ask("dev-0", json_request(f"r{i}", sample, deadline_ms=500))
        answers = [await client.answer(f"r{i}") for i in range(len(samples))]
    assert [a.label for a in answers] == exit_labels(artifact, DEEPEST_EXIT, samples).tolist()
    assert all(a.degraded and a.where == "device" and a.exit == DEEPEST_EXIT for a in answers)
    assert all(a.reason == "no plan from the edge" for a in answers)


async def test_a_silent_edge_costs_no_more_than_the_deadline(mosquitto, model_file):
    """The edge's status says serving and the plan is in force, but nothing answers (an edge
    that died before its will fired): each request is answered alone within its deadline."""
    path, artifact = model_file
    samples = digits_test_set().x[:4]
    serving = device(mosquitto, path, "dev-0")
    status = ServeEdgeStatus(session="dead", state="serving")
    ctrl = ServeCtrl(
        session="dead", device_id="dev-0", fingerprint=artifact.fingerprint, cut=2, threshold=None
    )
    async with MqttLink(mqtt(mosquitto), "dead-edge", []) as dead:
        await dead.publish(TOPICS.serve_status, to_json(status), retain=True)
        await dead.publish(TOPICS.device("dev-0", ServeChannel.CTRL), to_json(ctrl), retain=True)
        async with running(serving), app(mosquitto, "dev-0") as client:
            await wait_until(lambda: serving.plan is not None and serving.edge is not None)
            for i, sample in enumerate(samples):
                await client.ask("dev-0", frame_request(f"r{i}", sample, deadline_ms=400))
            answers = [await client.answer(f"r{i}") for i in range(len(samples))]
    assert [a.label for a in answers] == exit_labels(artifact, 2, samples).tolist()
    assert all(a.degraded and a.exit == 2 and a.cut == 2 for a in answers)
    assert all(a.latency_ms is not None and a.latency_ms <= 400 for a in answers), [
        a.latency_ms for a in answers
    ]
    assert all("did not answer" in (a.reason or "") for a in answers)
    assert serving.counters["edge_timeouts"] == len(samples)


async def test_when_the_edge_stops_the_device_answers_alone_at_once(mosquitto, model_file):
    path, artifact = model_file
    sample = digits_test_set().x[0]
    serving = device(mosquitto, path, "dev-0")
    the_edge = edge(mosquitto, path, {"dev-0": (1, EXITS_OFF)})
    async with running(serving), app(mosquitto, "dev-0") as client:
        async with running(the_edge):
            await wait_until(lambda: serving.plan is not None)
            await client.ask("dev-0", json_request("before", sample))
            assert (await client.answer("before")).where == "edge"
        await wait_until(lambda: serving.edge is not None and serving.edge.state != "serving")
        await client.ask("dev-0", json_request("after", sample, deadline_ms=5000))
        after = await client.answer("after")
    assert after.degraded
    assert after.exit == 1
    assert after.where == "device"
    assert after.label == exit_labels(artifact, 1, sample[None])[0]
    assert after.latency_ms is not None
    assert after.latency_ms < 1000
    assert after.reason == "the edge is stopped"


async def test_a_repeated_id_is_answered_once(mosquitto, model_file):
    path, _ = model_file
    sample = digits_test_set().x[0]
    serving = device(mosquitto, path, "dev-0")
    async with running(serving), app(mosquitto, "dev-0") as client:
        await client.ask("dev-0", json_request("same", sample))
        first = await client.answer("same")
        await client.ask("dev-0", frame_request("same", sample))
        again = await client.answer("same", 2)
        # Sent twice at once: the second finds the first in flight, or answered.
        await client.ask("dev-0", json_request("twice", sample))
        await client.ask("dev-0", json_request("twice", sample))
        await client.answer("twice")
        await wait_until(lambda: serving.counters["duplicate"] == 2)
        await client.ask("dev-0", json_request("last", sample))
        await client.answer("last")
    assert again == first
    assert len(set(map(str, client.answers["twice"]))) == 1  # every answer to it the same
    assert serving.counters["degraded"] == 3  # computed once per id
    assert serving.counters["duplicate"] == 2


async def test_bad_requests_get_error_answers(mosquitto, model_file):
    path, _ = model_file
    sample = digits_test_set().x[0]
    serving = device(mosquitto, path, "dev-0", max_request_bytes=16 * 1024)
    bad: dict[str | None, tuple[bytes, str]] = {
        None: (b"\x00\x01garbage", "malformed"),
        "shape": (json_request("shape", np.zeros((3, 8, 8))), "bad_shape"),
        "text": (json.dumps({"id": "text", "input": [["a"]]}).encode(), "bad_dtype"),
        "ragged": (json.dumps({"id": "ragged", "input": [[1, 2], [3]]}).encode(), "bad_input"),
        "nan": (json_request("nan", np.full((1, 8, 8), np.nan)), "not_finite"),
        "ints": (frame_request("ints", np.zeros((1, 8, 8), np.int64)), "bad_dtype"),
        "big": (json_request("big", np.zeros((1, 64, 64))), "too_large"),
        "extra": (json_request("extra", sample, colour="red"), "bad_schema"),
        "late": (json_request("late", sample, deadline_ms=-1), "bad_schema"),
    }
    async with running(serving), app(mosquitto, "dev-0") as client:
        for payload, _ in bad.values():
            await client.ask("dev-0", payload)
        await client.ask("dev-0", b'{"input": [1, 2]}')  # no id: answered with none
        answers = {key: await client.answer(key) for key in bad if key is not None}
        await wait_until(lambda: len(client.answers.get(None, ())) == 2)
        await client.ask("dev-0", json_request("good", sample))
        good = await client.answer("good")
    for key, (_, reason) in bad.items():
        if key is not None:
            assert answers[key].error == reason, (key, answers[key])
            assert answers[key].label is None
            assert answers[key].reason
    assert {a.error for a in client.answers[None]} == {"malformed", "bad_schema"}
    assert serving.counters["errors"] == len(bad) + 1
    assert serving.counters["rejected.bad_dtype"] == 2
    assert good.error is None
    assert good.label is not None


async def test_a_dropped_image_is_answered_once(mosquitto, model_file, tmp_path):
    path, artifact = model_file
    camera = tmp_path / "camera"
    camera.mkdir()
    serving = device(mosquitto, path, "dev-0", watch_dir=camera, watch_interval_s=0.05)
    digit = (digits_test_set().x[3, 0] * 255).astype(np.uint8)
    async with running(serving), app(mosquitto, "dev-0") as client:
        Image.fromarray(digit).save(camera / ".frame.png")  # a camera's temporary name
        (camera / ".frame.png").rename(camera / "frame-1.png")
        (camera / "broken.png").write_bytes(b"not a png")
        (camera / "notes.txt").write_text("not an image")
        answer = await client.answer("frame-1.png")
        broken = await client.answer("broken.png")
        await wait_until(lambda: (camera / ".done" / "frame-1.png").exists())
        await asyncio.sleep(0.5)  # ten more listings: nothing is answered again
    assert len(client.answers["frame-1.png"]) == 1
    expected = exit_labels(
        artifact, DEEPEST_EXIT, decode_image(camera / ".done" / "frame-1.png", (1, 8, 8))[None]
    )
    assert answer.label == expected[0]
    assert answer.degraded
    assert broken.error == "bad_image"
    assert (camera / ".failed" / "broken.png").exists()
    assert (camera / "notes.txt").exists()
    assert sorted(p.name for p in camera.iterdir()) == [".done", ".failed", "notes.txt"]
