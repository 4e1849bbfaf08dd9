"""A round started more than once (another edge replica repeats it for the devices of one that
died): the device takes each new attempt's start and tags its traffic with it; the edge never
applies traffic of another attempt than the one it serves.

No network: the device side is a ``DeviceSession`` over a recording link with a trainer that
computes nothing; the edge side a real ``RoundRunner`` behind a real ``Inbox``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from device_agent import DeviceSettings
from device_agent.host import host_environment
from device_agent.ports import HostTimings
from device_agent.session import DeviceSession
from edge_service.inbox import Inbox
from edge_service.liveness import Liveness
from edge_service.outbox import Outbox
from edge_service.registry import DeviceRegistry
from edge_service.rejections import Counters, Rejected
from edge_service.rounds import DeviceResult, RoundContext, RoundRunner
from schemas import (
    ActivationMeta,
    DeviceChannel,
    GradientMeta,
    Hello,
    ModelInfo,
    RoundAbort,
    RoundClose,
    RoundStart,
    Topics,
    TrainConfig,
    WeightsMeta,
    WeightsResync,
    WireModel,
    WireTensor,
    decode_frame,
    encode_frame,
    parse_meta,
    to_meta,
)
from schemas.weight_delta import delta_format, encode_weights
from splitnn.models import ModelSpec, build_model
from transport import Message

DEVICE = "dev-0"
MODEL = ModelInfo(name="small_cnn", input_shape=(1, 8, 8), num_classes=10)
ROUND = 4
TOPICS = Topics()
WAIT_S = 30  # a bound on waiting for an event, never a guess at how long it takes


def topic(channel: DeviceChannel) -> str:
    return TOPICS.device(DEVICE, channel)


# --- the device side -------------------------------------------------------------------------

ACT_SHAPE = (2, 3)


class RecordingLink:
    """Stands in for the device's MQTT link: records every publish, and wakes waiters."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.is_connected = True
        self.connects = 1
        self._grew = asyncio.Condition()

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False):
        self.published.append((topic, payload))
        async with self._grew:
            self._grew.notify_all()

    def metas(self, channel: DeviceChannel) -> list[dict[str, Any]]:
        return [decode_frame(p).meta for t, p in self.published if t == topic(channel)]

    async def wait_for(self, channel: DeviceChannel, count: int) -> list[dict[str, Any]]:
        """The first ``count`` frame metas published on ``channel``, once there are as many."""
        async with asyncio.timeout(WAIT_S), self._grew:
            await self._grew.wait_for(lambda: len(self.metas(channel)) >= count)
        return self.metas(channel)


@dataclass
class IdleTrainer:
    """The session's trainer with no compute: zeros of a fixed shape, every step at once."""

    starts: list[RoundStart] = field(default_factory=list)
    samples: int = 8
    input_shape: tuple[int, ...] = (1, 8, 8)
    num_classes: int = 10
    labels: tuple[str, ...] | None = None
    trains_whole_model: bool = False

    async def start_round(self, start: RoundStart, state: Mapping[str, np.ndarray]) -> None:
        self.starts.append(start)

    async def forward(self) -> tuple[WireTensor, np.ndarray]:
        return np.zeros(ACT_SHAPE, np.float32), np.zeros(ACT_SHAPE[0], np.int64)

    async def backward(self, grad: WireTensor) -> None:
        pass

    async def local_step(self) -> tuple[float, int]:
        raise AssertionError("the cut leaves blocks on the edge")

    async def state(self) -> dict[str, np.ndarray]:
        return {"w": np.zeros(3, np.float32)}

    async def profile(
        self, model: ModelInfo, batch_size: int, *, urgent: bool = False
    ) -> HostTimings:
        raise AssertionError("no welcome here")

    async def check_model(self, model: ModelInfo) -> str | None:
        return None


@pytest.fixture
async def device() -> AsyncIterator[tuple[DeviceSession[IdleTrainer], RecordingLink]]:
    settings = DeviceSettings(device_id=DEVICE, profile_cache=False)
    session = DeviceSession(settings, IdleTrainer(), environment=host_environment())
    link = RecordingLink()
    session._link = link  # type: ignore[assignment]
    try:
        yield session, link
    finally:
        await session._stop_training()
        await session._background.drain(2.0)


def round_start(attempt: int, batches: int = 1) -> RoundStart:
    # A long batch timeout: a batch is never re-sent while a test waits on something else.
    train = TrainConfig(lr=0.01, batch_size=ACT_SHAPE[0], batches=batches, batch_timeout_s=60)
    return RoundStart(session="s", round=ROUND, attempt=attempt, cut=1, model=MODEL,
                      train=train, deadline_s=60)  # fmt: skip


def to_device(session: DeviceSession[Any], message: WireModel, **tensors: np.ndarray) -> None:
    """Hand the session a control frame from the edge, as its dispatcher does."""
    payload = encode_frame(to_meta(message), tensors)
    session._handle(Message(topic(DeviceChannel.CTRL), payload, False))


def start_attempt(session: DeviceSession[Any], attempt: int, batches: int = 1) -> None:
    to_device(session, round_start(attempt, batches), w=np.zeros(3, np.float32))


def training(session: DeviceSession[Any]) -> asyncio.Task[None]:
    task = session._training
    assert task is not None
    return task


async def test_a_new_attempt_restarts_the_round_and_its_repeat_is_ignored(device) -> None:
    session, link = device
    start_attempt(session, 0)
    (act,) = await link.wait_for(DeviceChannel.ACT, 1)
    assert "attempt" not in act  # attempt 0, as every device sent it before attempts
    first = training(session)

    start_attempt(session, 1)  # the same round, repeated: a new start, not a repeat
    second = training(session)
    assert second is not first
    await asyncio.wait([first], timeout=WAIT_S)
    assert first.cancelled()
    acts = await link.wait_for(DeviceChannel.ACT, 2)
    assert acts[1]["attempt"] == 1
    assert [s.attempt for s in session.trainer.starts] == [0, 1]

    start_attempt(session, 1)  # a repeat of attempt 1 (a re-send, or QoS 1 redelivery)
    assert training(session) is second
    assert not second.cancelling()
    assert [s.attempt for s in session.trainer.starts] == [0, 1]

    # The older attempt's close and abort are not about the round in training.
    to_device(session, RoundClose(session="s", round=ROUND, attempt=0))
    to_device(session, RoundAbort(session="s", round=ROUND, attempt=0, reason="old"))
    assert not second.cancelling()
    assert session._closing is None

    # The first attempt's gradient for the same batch (late, from the replica serving it
    # then) is not this attempt's: ignored.
    for attempt in (0, 1):
        grad = GradientMeta(round=ROUND, attempt=attempt, seq=0, loss=1.0, correct=0,
                            server_s=0.0)  # fmt: skip
        payload = encode_frame(to_meta(grad), {"grad": np.zeros(ACT_SHAPE, np.float32)})
        session._handle(Message(topic(DeviceChannel.GRAD), payload, False))
        if attempt == 0:
            waiting = session._pending[(ROUND, 0)]
            assert not waiting.done(), "attempt 0's gradient answered attempt 1's batch"
    # Its own gradient: the round ends with its part uploaded, tagged with attempt 1.
    (weights,) = await link.wait_for(DeviceChannel.WEIGHTS, 1)
    assert (weights["kind"], weights["round"], weights["attempt"]) == ("weights", ROUND, 1)
    await asyncio.wait_for(second, WAIT_S)  # the round ended by itself, not cancelled
    assert len(link.metas(DeviceChannel.ACT)) == 2  # one batch per attempt, no re-send


async def test_only_the_attempt_in_training_is_closed_or_aborted(device) -> None:
    session, link = device
    start_attempt(session, 2, batches=3)
    await link.wait_for(DeviceChannel.ACT, 1)
    task = training(session)
    to_device(session, RoundClose(session="s", round=ROUND, attempt=1))
    assert session._closing is None
    to_device(session, RoundClose(session="s", round=ROUND, attempt=2))
    assert session._closing == (ROUND, 2)
    to_device(session, RoundAbort(session="s", round=ROUND, attempt=3, reason="newer?"))
    assert not task.cancelling()
    to_device(session, RoundAbort(session="s", round=ROUND, attempt=2, reason="given up"))
    assert task.cancelling()


async def test_a_weights_resync_names_its_attempt(device) -> None:
    """A round start whose deltas the device cannot apply: it asks for them in full, for that
    attempt (the edge drops another attempt's request as stale)."""
    session, link = device
    start = round_start(1).model_copy(update={"weights_base": ROUND - 1})
    base = {"w": np.zeros((64, 64), np.float32)}
    encoded = encode_weights({"w": base["w"] + 1}, base, delta_format("int8-delta"))
    assert encoded.deltas, "the test needs a round start of deltas"
    payload = encode_frame(to_meta(start), encoded.tensors)
    session._handle(Message(topic(DeviceChannel.CTRL), payload, False))  # it holds no base
    (request,) = await link.wait_for(DeviceChannel.WEIGHTS, 1)
    assert (request["kind"], request["round"], request["attempt"]) == ("weights_resync", ROUND, 1)


# --- the edge side ---------------------------------------------------------------------------

CUT = 2  # small_cnn: the activation at cut 2 is 32 x 8 x 8
EDGE_ACT_SHAPE = (32, 8, 8)
BATCH = 4


@dataclass
class OneRound:
    """The ``Rounds`` the inbox asks: one round runner in flight."""

    current: RoundRunner | None = None
    round_no: int = ROUND
    resyncs: list[WeightsResync] = field(default_factory=list)

    def resync_weights(self, device_id: str, request: WeightsResync) -> None:
        self.resyncs.append(request)


@dataclass
class Edge:
    inbox: Inbox
    rounds: OneRound
    counters: Counters
    runner: RoundRunner
    task: asyncio.Task[list[DeviceResult]]
    grads: asyncio.Queue[bytes]
    rejected: list[Rejected]

    def send(self, channel: DeviceChannel, payload: bytes) -> None:
        self.inbox.handle(DEVICE, channel, Message(topic(channel), payload, False))


def act_frame(attempt: int, seq: int = 0) -> bytes:
    meta = ActivationMeta(device_id=DEVICE, round=ROUND, attempt=attempt, seq=seq)
    act = np.zeros((BATCH, *EDGE_ACT_SHAPE), np.float32)
    return encode_frame(to_meta(meta), {"act": act, "labels": np.zeros(BATCH, np.int64)})


def weights_frame(edge: Edge, attempt: int) -> bytes:
    device = edge.runner.devices[DEVICE]
    meta = WeightsMeta(device_id=DEVICE, round=ROUND, attempt=attempt, cut=CUT, samples=BATCH,
                       batches=1, busy_s=0.1)  # fmt: skip
    return encode_frame(to_meta(meta), {k: v.numpy() for k, v in device.device_state.items()})


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1, thread_name_prefix="attempts-compute")
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
async def edge(executor: ThreadPoolExecutor) -> AsyncIterator[Edge]:
    """A round runner serving attempt 1 of round ROUND for DEVICE, behind the inbox."""
    counters = Counters()
    devices = DeviceRegistry(assumed_link_bps=1e6, stale_after_s=60)
    hello = Hello(device_id=DEVICE, instance="i", agent_version="0", samples=64,
                  dataset="digits", input_shape=(1, 8, 8), num_classes=10)  # fmt: skip
    devices.register(DEVICE, hello)
    outbox = Outbox(TOPICS, counters, devices, max_frame_bytes=1 << 24)
    grads: asyncio.Queue[bytes] = asyncio.Queue()
    rejected: list[Rejected] = []

    async def publish_grad(device_id: str, payload: bytes) -> None:
        grads.put_nowait(payload)

    async def close_device(device_id: str) -> None:
        pass

    spec = ModelSpec.of(MODEL)
    ctx = RoundContext(
        spec=spec, torch_device=torch.device("cpu"), max_frame_bytes=1 << 24, executor=executor,
        counters=counters, publish_grad=publish_grad, close_device=close_device,
        close_grace_s=0.1, count_partial=True,
        reject=lambda device_id, exc, seq: rejected.append(exc),
    )  # fmt: skip
    train = TrainConfig(lr=0.01, batch_size=BATCH, batches=10, batch_timeout_s=30)
    global_state = build_model(spec).state_dict()
    runner = RoundRunner(ctx, ROUND, global_state, {DEVICE: (CUT, train)}, attempt=1)
    rounds = OneRound(runner)
    liveness = Liveness(session="s", devices=devices, outbox=outbox, counters=counters,
                        timeout_s=1.0, on_evicted=lambda device_id: None)  # fmt: skip
    inbox = Inbox(session="s", topics=TOPICS, counters=counters, devices=devices, outbox=outbox,
                  liveness=liveness, rounds=rounds, model=MODEL, batch_size=BATCH,
                  max_payload_bytes=1 << 24)  # fmt: skip
    task = asyncio.create_task(runner.run(3600.0))
    try:
        yield Edge(inbox, rounds, counters, runner, task, grads, rejected)
    finally:
        runner.drop(DEVICE, "the test is over")
        await asyncio.wait_for(task, WAIT_S)


async def next_grad(edge: Edge) -> GradientMeta:
    async with asyncio.timeout(WAIT_S):
        payload = await edge.grads.get()
    return parse_meta(GradientMeta, decode_frame(payload).meta)


async def test_the_edge_drops_activations_of_an_older_attempt(edge: Edge) -> None:
    assert edge.runner.attempt == 1
    device = edge.runner.devices[DEVICE]
    session = device.session
    assert session is not None

    edge.send(DeviceChannel.ACT, act_frame(attempt=0))
    assert edge.counters["stale_messages"] == 1
    assert device.inbox.empty()  # never queued to be applied

    # The runner on its own drops it too (counted, nothing refused to the device).
    old = ActivationMeta(device_id=DEVICE, round=ROUND, attempt=0, seq=0)
    edge.runner.deliver_activation(DEVICE, old, decode_frame(act_frame(attempt=0)))
    assert edge.counters["stale_messages"] == 2
    assert device.inbox.empty()

    # The attempt served is applied: its batch 0 is the first step the session takes.
    edge.send(DeviceChannel.ACT, act_frame(attempt=1))
    grad = await next_grad(edge)
    assert (grad.round, grad.seq) == (ROUND, 0)
    assert session.stats.batches == 1
    assert edge.counters["duplicate_batches"] == 0
    assert edge.counters["stale_messages"] == 2
    assert not edge.rejected


async def test_the_edge_drops_weights_and_resyncs_of_another_attempt(edge: Edge) -> None:
    device = edge.runner.devices[DEVICE]
    edge.send(DeviceChannel.WEIGHTS, weights_frame(edge, attempt=0))
    edge.send(DeviceChannel.WEIGHTS, weights_frame(edge, attempt=2))
    old = WeightsResync(device_id=DEVICE, round=ROUND, attempt=0, reason="old")
    edge.send(DeviceChannel.WEIGHTS, encode_frame(to_meta(old)))
    assert edge.counters["stale_messages"] == 3
    assert not device.result.done()
    assert edge.rounds.resyncs == []

    meta = WeightsMeta(device_id=DEVICE, round=ROUND, attempt=0, cut=CUT, samples=BATCH,
                       batches=1, busy_s=0.1)  # fmt: skip
    edge.runner.deliver_weights(DEVICE, meta, decode_frame(weights_frame(edge, attempt=0)))
    assert edge.counters["stale_messages"] == 4
    assert not device.result.done()

    edge.send(DeviceChannel.WEIGHTS, weights_frame(edge, attempt=1))
    result = await asyncio.wait_for(asyncio.shield(device.result), WAIT_S)
    assert result.status == "ok"
    assert edge.counters["stale_messages"] == 4


async def test_attempt_0_traffic_still_reaches_a_first_attempt(executor) -> None:
    """Every existing caller builds runners of attempt 0; devices from before attempts send
    none: their traffic is that attempt's."""
    spec = ModelSpec.of(MODEL)
    counters = Counters()

    async def nothing(*_: Any) -> None:
        pass

    ctx = RoundContext(
        spec=spec, torch_device=torch.device("cpu"), max_frame_bytes=1 << 24, executor=executor,
        counters=counters, publish_grad=nothing, close_device=nothing, close_grace_s=0.1,
        count_partial=True, reject=lambda device_id, exc, seq: None,
    )  # fmt: skip
    train = TrainConfig(lr=0.01, batch_size=BATCH, batches=10, batch_timeout_s=30)
    runner = RoundRunner(ctx, ROUND, build_model(spec).state_dict(), {DEVICE: (CUT, train)})
    assert runner.attempt == 0
    legacy = {"v": 1, "device_id": DEVICE, "round": ROUND, "kind": "act", "seq": 0}
    meta = parse_meta(ActivationMeta, legacy)
    assert not runner.is_stale(meta)
    runner.deliver_activation(DEVICE, meta, decode_frame(act_frame(attempt=0)))
    assert runner.devices[DEVICE].inbox.qsize() == 1
    assert counters["stale_messages"] == 0
