"""Fuzzing every inbound handler of the edge with many thousands of generated messages.

No network: one ``EdgeService`` per module whose MQTT link is a recording fake, driven through
``_handle`` exactly as the dispatcher drives it (a ``Rejected`` is then reported by ``_reject``).
Properties, for every input on every channel the edge listens on:

* ``_handle`` returns or raises ``Rejected``; any other exception is a bug (the dispatcher only
  catches ``Rejected``: anything else kills it and with it the edge);
* the counters only grow, and every background publish completes;
* with no round open, round traffic that gets through validation is counted as stale, never
  applied; with a round open, no garbage batch is ever applied and no garbage upload completes
  the device's round, while valid batches are applied exactly once.

Inputs the fuzzing found escaping ``_handle`` (all fixed) are pinned at the end as regression
tests. A newly found one may be listed in ``KNOWN_BUGS`` (tolerated and counted as "known bug")
with an ``xfail(strict=True)`` test until it is fixed; the list is empty now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_service import EdgeService, EdgeSettings
from edge_service.driver import RoundDriver
from edge_service.inbox import Inbox
from edge_service.registry import DeviceRecord
from edge_service.rejections import Rejected
from edge_service.rounds import DeviceRound, RoundRunner
from schemas import (
    ActivationMeta,
    DeviceChannel,
    Hello,
    TrainConfig,
    WeightsMeta,
    encode_frame,
    to_json,
    to_meta,
)
from schemas.topics import DEVICE_ID_PATTERN, DEVICE_TO_EDGE
from tests.fuzzing import (
    DIMS,
    DTYPES,
    EDIT_OPS,
    ENCODINGS,
    MSGPACK_BIG,
    MSGPACK_WEIRD,
    NASTY_JSON,
    NASTY_MSGPACK,
    ROUNDS,
    WEIRD,
    FailureLog,
    FakeLink,
    KnownBugs,
    Tally,
    any_payload,
    edit_bytes,
    is_known_bug,
    json_payload,
    random_edits,
    shaped,
    tensors,
    variants,
)
from tests.fuzzing import settle as settle_background
from transport import Message

REGISTERED = "dev-0"
BYSTANDER = "dev-9"  # registered too, but never part of a round
UNKNOWN = "intruder"
GHOST = "ghost-of-dev-0"  # never registered
INPUT_SHAPE = [1, 8, 8]  # digits
NUM_CLASSES = 10
SPLIT = 2  # small_cnn: the activation at cut 2 is 32 x 8 x 8
ACT_SHAPE = (32, 8, 8)
BATCH = 8

JSON_CHANNELS = (DeviceChannel.HELLO, DeviceChannel.STATUS, DeviceChannel.TELEMETRY)
FRAME_CHANNELS = (DeviceChannel.ACT, DeviceChannel.WEIGHTS)

# Exceptions known to escape ``_handle`` and not fixed yet: tallied instead of failing every fuzz
# test (anything else fails). Empty: every one the fuzzing found so far is fixed.
KNOWN_BUGS: KnownBugs = ()

TALLY = Tally("edge fuzz")


# --- the service under test ------------------------------------------------------------------


@dataclass
class Edge:
    service: EdgeService
    inbox: Inbox
    driver: RoundDriver
    link: FakeLink
    failures: FailureLog


@pytest.fixture(scope="module")
def edge() -> Iterator[Edge]:
    service = EdgeService(
        EdgeSettings(dataset="digits", model="small_cnn", policy="sl", torch_threads=1)
    )
    asyncio.run(service.start_up())  # everything but the network
    assert service.inbox is not None
    assert service.driver is not None
    assert service.executor is not None
    link = FakeLink()
    service.outbox.link = link  # type: ignore[assignment]
    failures = FailureLog()
    tasks_log = logging.getLogger("transport.tasks")
    tasks_log.addHandler(failures)
    # Thousands of rejections each log a warning: keep them out of the captured logs.
    quiet = [logging.getLogger(n) for n in ("edge_service.inbox", "edge_service.rounds")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        yield Edge(service, service.inbox, service.driver, link, failures)
    finally:
        service.executor.shutdown(wait=True)
        tasks_log.removeHandler(failures)
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


@pytest.fixture(scope="module", autouse=True)
def input_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    TALLY.report(request.config)


def hello(device_id: str, instance: str = "fuzz") -> Hello:
    return Hello(
        device_id=device_id,
        instance=instance,
        agent_version="0",
        samples=100,
        dataset="digits",
        input_shape=tuple(INPUT_SHAPE),
        num_classes=NUM_CLASSES,
    )


def message(service: EdgeService, device_id: str, channel: DeviceChannel, payload: bytes):
    return Message(service.topics.device(device_id, channel), payload, False)


async def settle(edge: Edge) -> None:
    """Let the service's background publishes run; none may fail."""
    await settle_background(edge.service.outbox.background, edge.failures)


async def register(edge: Edge, *device_ids: str) -> None:
    """Make sure these devices are registered and online (fuzzed statuses may mark them off)."""
    for device_id in device_ids:
        record: DeviceRecord | None = edge.service.devices.get(device_id)
        if record is None or record.state == "offline":
            edge.inbox.handle(
                device_id,
                DeviceChannel.HELLO,
                message(edge.service, device_id, DeviceChannel.HELLO, to_json(hello(device_id))),
            )
    await settle(edge)


async def drive(
    edge: Edge, handler: str, device_id: str, channel: DeviceChannel, payload: bytes
) -> str:
    """Feed one message as the dispatcher would; returns 'ok', 'rejected.<reason>' or 'bug'."""
    service = edge.service
    before = service.counters.snapshot()
    try:
        edge.inbox.handle(device_id, channel, message(service, device_id, channel, payload))
        outcome = "ok"
    except Rejected as exc:
        edge.inbox.reject(device_id, channel, exc)  # what the dispatcher does with it
        outcome = f"rejected.{exc.reason}"
    except Exception as exc:
        if not is_known_bug(exc, KNOWN_BUGS):
            raise
        outcome = f"known bug ({type(exc).__name__})"
    await settle(edge)
    after = service.counters.snapshot()
    shrunk = {k: (v, after.get(k, 0)) for k, v in before.items() if after.get(k, 0) < v}
    assert not shrunk, f"counters went down: {shrunk}"
    if outcome.startswith("rejected."):
        assert after[outcome] == before.get(outcome, 0) + 1
    TALLY.record(handler, outcome)
    return outcome


# --- strategies -----------------------------------------------------------------------------------

DEVICE_IDS = st.sampled_from([REGISTERED, UNKNOWN]) | st.from_regex(
    DEVICE_ID_PATTERN, fullmatch=True
)
TOPIC_IDS = st.one_of(
    *[st.just(REGISTERED)] * 3, st.just(UNKNOWN), st.from_regex(DEVICE_ID_PATTERN, fullmatch=True)
)


# --- JSON messages ---------------------------------------------------------------------------

NONNEG = st.floats(min_value=0, max_value=1e6)
RATES = st.none() | st.floats(min_value=1e-3, max_value=1e12)
POWER = st.none() | shaped({k: NONNEG for k in ("compute_w", "transmit_w", "receive_w")})
COMPUTE = st.none() | shaped(
    {
        "model": st.sampled_from(["small_cnn", "vgg5"]),
        "batch_size": st.integers(1, 256),
        "forward_s": st.lists(NONNEG, max_size=7),
        "backward_s": st.lists(NONNEG, max_size=7),
    }
)
HELLO_FIELDS = shaped(
    {
        "v": st.just(1),
        "kind": st.just("hello"),
        "instance": st.text(max_size=12),
        "agent_version": st.text(max_size=8),
        "samples": st.integers(1, 10**9),
        "dataset": st.sampled_from(["digits", "cifar10", ""]),
        # Mostly the model's input; otherwise an incompatible device.
        "input_shape": st.one_of(*[st.just(INPUT_SHAPE)] * 4, st.lists(st.integers(0, 64))),
        "num_classes": st.one_of(*[st.just(NUM_CLASSES)] * 4, st.integers(2, 1000)),
    },
    {
        "profile": st.sampled_from(["host", "rpi4", "jetson-nano"]),
        "link_mode": st.sampled_from(["direct", "tc", "token-bucket"]),
        "wire_dtypes": st.lists(
            st.sampled_from(["float32", "float16", "int8", "int4"]), max_size=3
        ),
        "power": POWER,
        "memory_bytes": st.none() | st.integers(0, 2**40),
        "uplink_bps": RATES,
        "downlink_bps": RATES,
        "allowed_cuts": st.none() | st.lists(st.integers(1, 8), max_size=5),
    },
)
STATUS_FIELDS = shaped(
    {
        "v": st.just(1),
        "kind": st.just("device_status"),
        "state": st.sampled_from(["online", "idle", "training", "aborted", "offline"]),
    },
    {"round": st.none() | st.integers(0, 10**6)},
)
TELEMETRY_FIELDS = shaped(
    {"v": st.just(1), "kind": st.just("telemetry")},
    {
        "round": st.none() | st.integers(0, 10),
        "batches": st.integers(0, 10**6),
        "busy_s": NONNEG,
        "mean_batch_s": st.none() | NONNEG,
        "speed_ratio": st.none() | st.floats(0.01, 100),
        "uplink_bps": RATES,
        "downlink_bps": RATES,
        "uplink_samples": st.integers(0, 100),
        "downlink_samples": st.integers(0, 100),
        "battery_pct": st.none() | st.floats(0, 100),
        "charging": st.none() | st.booleans(),
        "board_power_w": st.none() | NONNEG,
        "compute": COMPUTE,
    },
)
JSON_FIELDS = {
    DeviceChannel.HELLO: HELLO_FIELDS,
    DeviceChannel.STATUS: STATUS_FIELDS,
    DeviceChannel.TELEMETRY: TELEMETRY_FIELDS,
}
CLAIMS = st.sampled_from(["own"] * 5 + ["other", "missing", "weird"])


def claim(fields: dict[str, Any], topic_id: str, how: str, other: str, weird: Any) -> None:
    """Put the device id the payload claims into ``fields``."""
    if how == "own":
        fields["device_id"] = topic_id
    elif how == "other":
        fields["device_id"] = other if other != topic_id else f"{topic_id}x"
    elif how == "weird":
        fields["device_id"] = weird


# --- frames ----------------------------------------------------------------------------------

TENSORS = tensors(
    [(BATCH, *ACT_SHAPE), (1, *ACT_SHAPE), (BATCH,), (0, *ACT_SHAPE), (BATCH + 1, *ACT_SHAPE)],
    int_range=(-3, NUM_CLASSES + 3),
)
SECONDS = st.floats(0, 100)
META_FIELDS = {
    DeviceChannel.ACT: shaped(
        {"v": st.just(1), "kind": st.just("act"), "round": ROUNDS, "seq": st.integers(0, 10)},
        weird=MSGPACK_WEIRD | MSGPACK_BIG,
    ),
    DeviceChannel.WEIGHTS: shaped(
        {
            "v": st.just(1),
            "kind": st.just("weights"),
            "round": ROUNDS,
            "split": st.integers(1, 5),
            "samples": st.integers(0, 10**6),
            "batches": st.integers(0, 10**4),
            "busy_s": SECONDS,
        },
        {
            "loss": st.none() | st.floats(0, 10),
            "rtt_median_s": st.none() | SECONDS,
            "uplink_s": SECONDS,
            "downlink_s": SECONDS,
            "behind_s": SECONDS,
        },
        weird=MSGPACK_WEIRD | MSGPACK_BIG,
    ),
}


# --- 1. anything at all on every channel -----------------------------------------------------


@pytest.mark.parametrize("channel", DEVICE_TO_EDGE, ids=str)
async def test_an_empty_payload_is_ignored(edge, channel):
    """A cleared retained message: nothing happens, nothing is counted."""
    before = edge.service.counters.snapshot()
    assert await drive(edge, f"{channel}/empty", UNKNOWN, channel, b"") == "ok"
    assert edge.service.counters.snapshot() == before


ANY_PAYLOAD = any_payload(TENSORS)


@pytest.mark.parametrize("channel", DEVICE_TO_EDGE, ids=str)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(device_id=TOPIC_IDS, payload=ANY_PAYLOAD, seed=st.integers(0, 2**32))
async def test_anything_on_any_channel(edge, channel, device_id, payload, seed):
    await register(edge, REGISTERED)
    kind, data = payload
    TALLY.examples[f"{channel}/any"] += 1
    for edits in [[], *random_edits(seed, 2)]:
        edited = edit_bytes(data, edits)
        if edited or not edits:  # an edit that empties it repeats test_an_empty_payload_...
            await drive(edge, f"{channel}/any ({kind})", device_id, channel, edited)


# --- 2. JSON that looks like the real messages -----------------------------------------------


@pytest.mark.parametrize("channel", JSON_CHANNELS, ids=str)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    topic_id=TOPIC_IDS,
    how=CLAIMS,
    other=DEVICE_IDS,
    weird=WEIRD,
    encoding=ENCODINGS,
    seed=st.integers(0, 2**32),
)
async def test_valid_looking_json(edge, channel, data, topic_id, how, other, weird, encoding,
                                  seed):  # fmt: skip
    await register(edge, REGISTERED)
    fields = data.draw(JSON_FIELDS[channel])
    claim(fields, topic_id, how, other, weird)
    TALLY.examples[f"{channel}/valid-looking"] += 1
    for message_fields in [fields, *variants(fields, seed, 4, NASTY_JSON, ["device_id"])]:
        before = edge.service.devices.get(topic_id)
        payload = json_payload(message_fields, encoding)
        outcome = await drive(edge, f"{channel}/valid-looking", topic_id, channel, payload)
        if outcome == "ok" and channel is DeviceChannel.HELLO:
            # Accepted: registered as what it said, and welcomed.
            record = edge.service.devices[topic_id]
            assert record.hello.device_id == topic_id
            assert record.hello.input_shape == tuple(INPUT_SHAPE)
            ctrl = edge.service.topics.device(topic_id, DeviceChannel.CTRL)
            assert edge.link.published[-1][0] == ctrl
        if outcome == "ok" and channel is DeviceChannel.TELEMETRY:
            assert before is not None  # only registered devices' telemetry is taken
            assert edge.service.devices[topic_id].telemetry is not None


# --- 3. frames with random metadata and tensors; frames that look real -----------------------


@pytest.mark.parametrize("channel", FRAME_CHANNELS, ids=str)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    topic_id=TOPIC_IDS,
    how=CLAIMS,
    other=DEVICE_IDS,
    tensors=TENSORS,
    seed=st.integers(0, 2**32),
)
async def test_valid_looking_frames_with_no_round_open(
    edge, channel, data, topic_id, how, other, tensors, seed
):
    await register(edge, REGISTERED)
    assert edge.driver.current is None
    meta = data.draw(META_FIELDS[channel])
    claim(meta, topic_id, how, other, data.draw(MSGPACK_WEIRD))
    TALLY.examples[f"{channel}/valid-looking frame"] += 1
    for frame_meta in [meta, *variants(meta, seed, 3, NASTY_MSGPACK, ["device_id"])]:
        stale = edge.service.counters["stale_messages"]
        payload = encode_frame(frame_meta, tensors)
        outcome = await drive(edge, f"{channel}/valid-looking frame", topic_id, channel, payload)
        if outcome == "ok":
            # Well-formed traffic of a round that is not open: counted, discarded, not applied.
            assert edge.service.counters["stale_messages"] == stale + 1
            assert topic_id in edge.service.devices
        else:
            assert edge.service.counters["stale_messages"] == stale


def valid_act_frame(device_id: str, round_no: int, seq: int, batch: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    meta = ActivationMeta(device_id=device_id, round=round_no, seq=seq)
    tensors: dict[str, np.ndarray] = {
        "act": rng.standard_normal((batch, *ACT_SHAPE)).astype(np.float32),
        "labels": rng.integers(0, NUM_CLASSES, batch).astype(np.int64),
    }
    return encode_frame(to_meta(meta), tensors)


def small_frame(channel: DeviceChannel, seed: int) -> tuple[DeviceChannel, bytes]:
    """A valid frame with small tensors, so that random edits often hit the headers."""
    meta: dict[str, Any] = {"v": 1, "kind": "act", "device_id": REGISTERED, "round": 1, "seq": 0}
    if channel is DeviceChannel.WEIGHTS:
        meta = to_meta(
            WeightsMeta(device_id=REGISTERED, round=1, cut=2, samples=3, batches=1, busy_s=0.5)
        )
    tensors: dict[str, np.ndarray] = {
        "act": np.arange(6, dtype=np.float32).reshape(2, 3) + seed,
        "labels": np.zeros(2, np.int64),
        "empty": np.zeros((0, 3), np.float16),
    }
    return channel, encode_frame(meta, tensors)


EDITS = st.tuples(st.sampled_from(EDIT_OPS), st.integers(0, 2**16), st.integers(0, 255))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.builds(small_frame, st.sampled_from(FRAME_CHANNELS), st.integers(0, 3)),
    edits=st.lists(EDITS, min_size=1, max_size=4),
    seed=st.integers(0, 2**32),
)
async def test_corrupted_frames(edge, base, edits, seed):
    """Valid frames with bytes flipped, set, inserted, deleted, cut off or appended."""
    await register(edge, REGISTERED)
    channel, payload = base
    TALLY.examples["corrupted frames"] += 1
    for some_edits in [edits, *random_edits(seed, 4)]:
        corrupted = edit_bytes(payload, some_edits)
        if not corrupted:
            continue
        await drive(edge, f"{channel}/corrupted frame", REGISTERED, channel, corrupted)


HEADERS = shaped(
    {
        "name": st.sampled_from(["act", "labels", "grad", "0.0.weight"]) | st.text(max_size=6),
        "dtype": st.sampled_from([*DTYPES, "float128", "complex64", "object", "<f4", ""]),
        "shape": st.lists(DIMS, max_size=10),
    },
    weird=MSGPACK_WEIRD,
)


def hostile_frame(channel: DeviceChannel, tensors: list[tuple[Any, int]], shape: int) -> bytes:
    """A frame of valid meta and hand-made tensor headers (any shape, dtype, size)."""
    meta = small_frame(channel, 0)[1]
    head = msgpack.unpackb(meta, raw=False)[0]
    parts: list[Any] = [head]
    for header, size in tensors:
        parts.append([header, bytes(size)] if shape % 3 else [header, bytes(size), None])
    return msgpack.packb(parts, use_bin_type=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    channel=st.sampled_from(FRAME_CHANNELS),
    tensors=st.lists(st.tuples(HEADERS, st.integers(0, 64)), min_size=1, max_size=3),
    shape=st.integers(0, 8),
)
async def test_hostile_tensor_headers(edge, channel, tensors, shape):
    """Headers claiming huge, empty, negative-looking or mistyped shapes and odd dtypes."""
    await register(edge, REGISTERED)
    TALLY.examples["hostile tensor headers"] += 1
    await drive(edge, f"{channel}/hostile tensor headers", REGISTERED, channel,
                hostile_frame(channel, tensors, shape))  # fmt: skip


# --- 4. the dispatcher itself: random topics ---------------------------------------------------


class ScriptedLink(FakeLink):
    """A fake link whose message stream is a fixed list."""

    def __init__(self, messages: list[Message]) -> None:
        super().__init__()
        self._messages = messages

    async def _stream(self) -> AsyncIterator[Message]:
        for m in self._messages:
            yield m

    def messages(self) -> AsyncIterator[Message]:
        return self._stream()


TOPICS = st.one_of(
    st.text(max_size=40),
    st.builds(lambda i, c: f"ares/v1/dev/{i}/{c}", st.text(max_size=10), st.text(max_size=8)),
    st.builds(
        lambda i, c: f"ares/v1/dev/{i}/{c.value}",
        DEVICE_IDS,
        st.sampled_from(list(DeviceChannel)),
    ),
    st.sampled_from(["ares/v1/edge/status", "ares/v1/dev/dev-0", "ares/v1/dev//hello", "#"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topics=st.lists(st.tuples(TOPICS, ANY_PAYLOAD), min_size=1, max_size=4))
async def test_the_dispatcher_with_random_topics(edge, topics):
    """Whole messages through ``_dispatch``: unknown topics are counted, the rest handled."""
    await register(edge, REGISTERED)
    TALLY.examples["dispatcher"] += 1
    service = edge.service
    messages = [Message(topic, payload, False) for topic, (_, payload) in topics]
    parsed = [service.topics.parse_device_topic(m.topic) for m in messages]
    unknown = service.counters["rejected.unknown_topic"]
    try:
        await edge.inbox.dispatch(ScriptedLink(messages))
    except Exception as exc:
        if not is_known_bug(exc, KNOWN_BUGS):
            raise
    await settle(edge)
    assert service.counters["rejected.unknown_topic"] >= unknown + parsed.count(None)
    TALLY.inputs["dispatcher/random topics"] += len(messages)
    TALLY.outcomes["dispatcher/random topics"]["unknown topic"] += parsed.count(None)


# --- 5. a round in progress ------------------------------------------------------------------


@dataclass
class OpenRound:
    runner: RoundRunner
    task: asyncio.Task[Any]
    device: DeviceRound
    round_no: int
    applied: int = 0  # valid batches sent so far: the session must have applied exactly these


_rounds_opened = 0


@pytest.fixture
async def open_round(edge: Edge) -> AsyncIterator[OpenRound]:
    """A real RoundRunner for the registered device, serving, as the round driver runs it."""
    global _rounds_opened
    _rounds_opened += 1
    service, driver = edge.service, edge.driver
    await register(edge, REGISTERED, BYSTANDER)
    executor = ThreadPoolExecutor(1, thread_name_prefix="fuzz-compute")
    ctx = replace(driver.context, executor=executor, close_grace_s=0.1, count_partial=True)
    train = TrainConfig(lr=0.01, batch_size=BATCH, batches=10**6, batch_timeout_s=30)
    round_no = 100 + _rounds_opened
    runner = RoundRunner(ctx, round_no, service.global_state, {REGISTERED: (SPLIT, train)})
    driver.current, driver.round_no = runner, round_no
    task = asyncio.create_task(runner.run(3600.0))
    try:
        yield OpenRound(runner, task, runner.devices[REGISTERED], round_no)
    finally:
        driver.current, driver.round_no = None, 0
        runner.drop(REGISTERED, "the test is over")
        await asyncio.wait_for(task, 10)
        executor.shutdown(wait=True)
        await settle(edge)


async def wait_until_served(edge: Edge, round_: OpenRound) -> None:
    """Until the device's inbox is drained and every valid batch sent is applied."""
    session = round_.device.session
    assert session is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not round_.device.inbox.empty() or session.next_seq < round_.applied:
        assert loop.time() < deadline, "the round stopped serving"
        assert not round_.task.done(), round_.task
        await asyncio.sleep(0 if not round_.device.inbox.empty() else 0.001)
    await settle(edge)


ACT_DEFECTS = [
    "act_dtype", "act_shape", "batch_zero", "batch_over", "not_finite", "labels_dtype",
    "labels_shape", "labels_range", "extra_tensor", "missing_tensor", "seq_ahead",
    "stale_round", "claims_other", "not_in_round", "unknown_device", "bad_meta", "truncate",
    "trailing",
]  # fmt: skip


@dataclass(frozen=True)
class ActSpec:
    defects: frozenset[str]
    batch: int
    seed: int
    knob: int  # picks among the variants of a defect
    duplicate: bool  # a valid frame repeating an applied batch


SOME_DEFECTS = st.frozensets(st.sampled_from(ACT_DEFECTS), min_size=1, max_size=3)
ACT_SPECS = st.builds(
    ActSpec,
    st.just(frozenset[str]()) | SOME_DEFECTS | SOME_DEFECTS,  # a third of them valid
    st.integers(1, BATCH),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**31),
    st.booleans(),
)


def build_act(spec: ActSpec, round_: OpenRound) -> tuple[str, bytes, bool]:
    """(topic device, payload, whether it is a new valid batch) for one act spec.

    Every defect on its own makes the frame invalid, whatever other defects come with it.
    """
    d, knob = spec.defects, spec.knob
    rng = np.random.default_rng(spec.seed)
    next_seq = round_.applied
    seq = int(rng.integers(0, next_seq)) if spec.duplicate and next_seq and not d else next_seq
    batch = spec.batch
    if "batch_zero" in d:
        batch = 0
    elif "batch_over" in d:
        batch = BATCH + 1 + knob % 5
    act = rng.standard_normal((batch, *ACT_SHAPE)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int64)
    if "act_shape" in d:
        shapes = [(batch, 16, 8, 8), (batch, 32, 4, 4), (batch, 32, 8), (batch, 2048), (),
                  (batch, 32, 8, 8, 1), (32, 8, 8), (batch, 8, 8, 32)]  # fmt: skip
        act = np.asarray(rng.standard_normal(shapes[knob % len(shapes)]), np.float32)
    if "not_finite" in d:
        if not act.size:
            act = np.zeros((1, *ACT_SHAPE), np.float32)
            labels = np.zeros(1, np.int64)
        act.reshape(-1)[knob % act.size] = [np.nan, np.inf, -np.inf][knob % 3]
    if "act_dtype" in d:
        with np.errstate(invalid="ignore", over="ignore"):
            act = act.astype(["float16", "float64", "int32", "uint8", "bool", "int64"][knob % 6])
    if "labels_range" in d:
        if not labels.size:
            labels = np.zeros(max(batch, 1), np.int64)
        bad = [-1, NUM_CLASSES, 2**63 - 1, -(2**63), NUM_CLASSES + knob][knob % 5]
        labels.reshape(-1)[knob % labels.size] = bad
    if "labels_shape" in d:
        variants = [np.zeros(batch + 1 + knob % 3, np.int64), np.zeros((batch, 1), np.int64),
                    np.zeros((), np.int64), labels[:-1]]  # fmt: skip
        labels = variants[knob % 4]
        if labels.shape == (batch,):  # labels[:-1] of an empty batch is still empty
            labels = np.zeros(batch + 1, np.int64)
    if "labels_dtype" in d:
        labels = labels.astype(["int32", "float32", "uint8", "int16", "bool", "float64"][knob % 6])
    tensors: dict[str, np.ndarray] = {"act": act, "labels": labels}
    if "extra_tensor" in d:
        tensors[["grad", "x", "act2"][knob % 3]] = np.zeros(1, np.float32)
    if "missing_tensor" in d:
        del tensors[["act", "labels"][knob % 2]]
    meta = to_meta(ActivationMeta(device_id=REGISTERED, round=round_.round_no, seq=seq))
    if "seq_ahead" in d:
        meta["seq"] = next_seq + 1 + knob % 1000
    if "stale_round" in d:
        meta["round"] = [round_.round_no - 1, round_.round_no + 1, 0, 2**63][knob % 4]
    if "claims_other" in d:
        meta["device_id"] = [BYSTANDER, GHOST, "dev-00"][knob % 3]
    if "bad_meta" in d:
        options: list[dict[str, Any]] = [
            {"seq": None},
            {"extra": 1},
            {"seq": -1},
            {"v": 3},
            {"kind": "weights"},
            {"seq": 1.5},
        ]
        broken = options[knob % len(options)]
        meta.update(broken)
        if broken == {"seq": None}:
            del meta["seq"]
    topic_id = REGISTERED
    if "not_in_round" in d:
        topic_id = BYSTANDER
        meta["device_id"] = REGISTERED if "claims_other" in d else BYSTANDER
    if "unknown_device" in d:
        topic_id = GHOST
    payload = encode_frame(meta, tensors)
    removed = 0
    if "truncate" in d:
        removed = 1 + knob % len(payload)
        payload = payload[: len(payload) - removed]
    if "trailing" in d:
        # Never as many bytes as were cut: zeros in place of a cut tail (a NaN among them) may
        # make a valid frame again, which the edge rightly applies.
        added = 1 + knob % 16
        payload += bytes(added + (added == removed))
    return topic_id, payload, not d and seq == next_seq


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(specs=st.lists(ACT_SPECS, min_size=1, max_size=4))
async def test_act_fuzz_with_a_round_open(edge, open_round, specs):
    """Garbage batches are rejected or counted stale; never applied, never crash the worker."""
    await register(edge, REGISTERED, BYSTANDER)
    session = open_round.device.session
    assert session is not None
    counters = edge.service.counters
    TALLY.examples["act with a round open"] += 1
    for spec in specs:
        topic_id, payload, new_valid = build_act(spec, open_round)
        before = counters.snapshot()
        # Count a valid batch before sending it: if anything below fails, the examples that
        # hypothesis replays on the same round still expect what the edge really applied.
        open_round.applied += new_valid
        outcome = await drive(edge, "act/round open", topic_id, DeviceChannel.ACT, payload)
        if new_valid:
            assert outcome == "ok"
        await wait_until_served(edge, open_round)
        # What the worker made of what _handle queued, for the summary.
        later = {k: v - before.get(k, 0) for k, v in counters.snapshot().items()}
        worker = TALLY.outcomes["act/round open, in the worker"]
        worker["applied"] += new_valid
        for name, increase in later.items():
            if increase and (name.startswith("rejected.") or name == "duplicate_batches"):
                worker[name] += increase
        # Exactly the valid batches were applied, once each; the round goes on.
        assert session.stats.batches == open_round.applied
        assert session.next_seq == open_round.applied
        assert not open_round.device.result.done()
        assert not open_round.task.done()


WEIGHT_DEFECTS = [
    "split", "missing_key", "extra_key", "shape", "dtype", "not_finite", "stale_round",
    "claims_other", "not_in_round", "bad_meta", "truncate",
]  # fmt: skip


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    defects=st.frozensets(st.sampled_from(WEIGHT_DEFECTS), min_size=1, max_size=3),
    knob=st.integers(0, 2**31),
)
async def test_garbage_weights_never_complete_the_round(edge, open_round, defects, knob):
    await register(edge, REGISTERED, BYSTANDER)
    TALLY.examples["weights with a round open"] += 1
    device = open_round.device
    state = {k: v.numpy().copy() for k, v in device.device_state.items()}
    keys = sorted(state)
    split = [1, 3, 4, 5][knob % 4] if "split" in defects else SPLIT
    if "missing_key" in defects:
        del state[keys[knob % len(keys)]]
    if "extra_key" in defects:
        state[["3.1.weight", "x", "0.0.weight.extra"][knob % 3]] = np.zeros(2, np.float32)
    present = sorted(set(state) & set(keys))
    if "shape" in defects and present:
        name = present[knob % len(present)]
        state[name] = np.zeros((*state[name].shape, 1), np.float32)
    if "dtype" in defects and present:
        name = present[(knob // 7) % len(present)]
        state[name] = state[name].astype(["float16", "float64", "int32"][knob % 3])
    if "not_finite" in defects and present:
        name = present[(knob // 3) % len(present)]
        array = state[name].astype(np.float32)
        array.reshape(-1)[knob % array.size] = [np.nan, np.inf, -np.inf][knob % 3]
        state[name] = array
    meta = to_meta(WeightsMeta(device_id=REGISTERED, round=open_round.round_no, cut=split,
                               samples=8, batches=1, busy_s=0.1))  # fmt: skip
    if "stale_round" in defects:
        meta["round"] = open_round.round_no + 1 + knob % 3
    if "claims_other" in defects:
        meta["device_id"] = BYSTANDER
    if "bad_meta" in defects:
        meta[["samples", "busy_s", "cut"][knob % 3]] = -1
    topic_id = BYSTANDER if "not_in_round" in defects else REGISTERED
    if "not_in_round" in defects and "claims_other" not in defects:
        meta["device_id"] = BYSTANDER
    payload = encode_frame(meta, state)
    if "truncate" in defects:
        payload = payload[: len(payload) - 1 - knob % len(payload)]
    await drive(edge, "weights/round open", topic_id, DeviceChannel.WEIGHTS, payload)
    await wait_until_served(edge, open_round)
    assert not device.result.done(), device.result.result()
    assert not open_round.task.done()


async def test_a_valid_batch_is_applied_once_and_valid_weights_end_the_round(edge, open_round):
    """The positive control of the round fuzz: what is valid does get through, exactly once."""
    service, device = edge.service, open_round.device
    session = device.session
    assert session is not None
    grads = service.topics.device(REGISTERED, DeviceChannel.GRAD)
    sent = len(edge.link.on(grads))
    payload = valid_act_frame(REGISTERED, open_round.round_no, 0, BATCH, seed=1)
    assert await drive(edge, "act/round open", REGISTERED, DeviceChannel.ACT, payload) == "ok"
    open_round.applied = 1
    await wait_until_served(edge, open_round)
    assert session.stats.batches == 1
    assert len(edge.link.on(grads)) == sent + 1

    duplicates = service.counters["duplicate_batches"]
    assert await drive(edge, "act/round open", REGISTERED, DeviceChannel.ACT, payload) == "ok"
    await wait_until_served(edge, open_round)
    assert session.stats.batches == 1  # a repeat is answered again, never applied twice
    assert service.counters["duplicate_batches"] == duplicates + 1
    assert len(edge.link.on(grads)) == sent + 2

    state = {k: v.numpy() for k, v in device.device_state.items()}
    meta = WeightsMeta(device_id=REGISTERED, round=open_round.round_no, cut=SPLIT, samples=BATCH,
                       batches=1, busy_s=0.1)  # fmt: skip
    weights = encode_frame(to_meta(meta), state)
    assert await drive(edge, "weights/round open", REGISTERED, DeviceChannel.WEIGHTS, weights) == (
        "ok"
    )
    result = await asyncio.wait_for(asyncio.shield(device.result), 5)
    assert (result.status, result.batches, result.samples) == ("ok", 1, BATCH)
    assert result.state is not None
    assert set(result.state) == set(service.global_state)


# --- bugs found ------------------------------------------------------------------------------
# Fuzzing found three inputs that escaped _handle as RecursionError/ValueError; the schemas fixes
# (parse_json, the codec's dimension limit) turned them into rejections: kept as regressions.


def zero_size_frame(shape: list[int], dtype: str = "float32") -> bytes:
    """An act frame whose one tensor is empty (zero bytes) but declares ``shape``."""
    meta = to_meta(ActivationMeta(device_id=REGISTERED, round=1, seq=0))
    header = {"name": "act", "dtype": dtype, "shape": shape}
    return msgpack.packb([meta, [header, b""]], use_bin_type=True)


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("channel", "payload"),
    [
        pytest.param(DeviceChannel.HELLO, DEEP_JSON, id="deeply-nested-json"),
        pytest.param(
            DeviceChannel.TELEMETRY,
            b'{"device_id": "dev-0", "batches": ' + b"1" * 5000 + b"}",
            id="int-over-4300-digits",
        ),
        pytest.param(DeviceChannel.ACT, zero_size_frame([0, 2**63]), id="zero-size-huge-dim"),
        pytest.param(
            DeviceChannel.ACT,
            msgpack.packb(
                [
                    to_meta(ActivationMeta(device_id=REGISTERED, round=1, seq=0)),
                    [{"name": "act", "dtype": [], "shape": []}, b""],
                ]
            ),
            id="unhashable-dtype",
        ),
        pytest.param(
            DeviceChannel.ACT,
            zero_size_frame([0, 2**31 - 1, 2**31 - 1]),
            id="zero-size-huge-product",
        ),
    ],
)
async def test_hostile_inputs_found_by_fuzzing_are_rejected(edge, channel, payload):
    """Each of these, from a registered device, must be a ``Rejected``."""
    await register(edge, REGISTERED)
    service = edge.service
    with pytest.raises(Rejected):
        edge.inbox.handle(REGISTERED, channel, message(service, REGISTERED, channel, payload))


async def test_the_dispatcher_survives_a_deeply_nested_json_hello(edge):
    """Before the fix one such hello killed EdgeService._dispatch: nothing after it was read."""
    service = edge.service
    topic = service.topics.device(UNKNOWN, DeviceChannel.HELLO)
    link = ScriptedLink(
        [
            Message(topic, DEEP_JSON, False),
            Message(topic, to_json(hello(UNKNOWN, instance="after")), False),
        ]
    )
    bad_json = service.counters["rejected.bad_json"]
    await edge.inbox.dispatch(link)
    await settle(edge)
    assert service.devices[UNKNOWN].hello.instance == "after"
    assert service.counters["rejected.bad_json"] == bad_json + 1
