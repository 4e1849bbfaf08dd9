"""Fuzzing the device agent's inbound handler with thousands of generated messages.

No network: one ``DeviceAgent`` per module whose MQTT link is a recording fake, driven through
``_handle`` exactly as its dispatcher drives it. Properties, for every input on every topic the
agent reads (its ctrl, grad and error topics and the edge status topic), and on others:

* only ``SchemaError`` and ``CodecError`` escape ``_handle`` (the dispatcher catches exactly
  those; anything else kills it, and with it the agent);
* a round start with weights that do not fit its model never trains: the training task ends by
  itself, quickly, with the round reported aborted and no activation sent.

Inputs the fuzzing found escaping ``_handle`` (all fixed) are pinned at the end as regression
tests. A newly found one may be listed in ``KNOWN_BUGS`` (tolerated and counted as "known bug")
with an ``xfail(strict=True)`` test until it is fixed; the list is empty now.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_agent import DeviceAgent, DeviceSettings
from schemas import (
    CodecError,
    DeviceChannel,
    GradientMeta,
    ModelInfo,
    RoundStart,
    SchemaError,
    TrainConfig,
    encode_frame,
    parse_meta,
    to_meta,
)
from schemas.topics import DEVICE_ID_PATTERN
from splitnn.models import ModelSpec, build_model
from splitnn.partition import split_state
from splitnn.tensors import state_to_arrays
from tests.fuzzing import (
    DIMS,
    DTYPES,
    ENCODINGS,
    FLOATS,
    MSGPACK_BIG,
    MSGPACK_WEIRD,
    NASTY_JSON,
    NASTY_MSGPACK,
    ROUNDS,
    FailureLog,
    FakeLink,
    KnownBugs,
    Tally,
    any_payload,
    edit_bytes,
    is_known_bug,
    random_edits,
    shaped,
    tensors,
    variants,
)
from tests.fuzzing import settle as settle_background
from transport import Message

DEVICE = "dev-0"
MODEL = ModelInfo(name="small_cnn", input_shape=(1, 8, 8), num_classes=10)
ALLOWED = (SchemaError, CodecError)  # what the agent's dispatcher catches

# Exceptions known to escape ``_handle`` and not fixed yet: tallied instead of failing every fuzz
# test (anything else fails). Empty: every one the fuzzing found so far is fixed.
KNOWN_BUGS: KnownBugs = ()

TALLY = Tally("device agent fuzz")


# --- the agent under test --------------------------------------------------------------------


@dataclass
class Agent:
    agent: DeviceAgent
    link: FakeLink
    failures: FailureLog
    profiles: list[tuple[str, int]]  # (model, batch size) of every profile a welcome asked for

    def topic(self, channel: DeviceChannel, device_id: str = DEVICE) -> str:
        return self.agent.topics.device(device_id, channel)

    def statuses(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.link.on(self.topic(DeviceChannel.STATUS))]


@pytest.fixture(scope="module")
def device() -> Iterator[Agent]:
    agent = DeviceAgent(DeviceSettings(device_id=DEVICE, dataset="digits", torch_threads=1))
    link = FakeLink()
    agent._link = link  # type: ignore[assignment]
    profiles: list[tuple[str, int]] = []

    async def no_profiling(model: ModelInfo, batch_size: int):
        # A welcome makes the agent profile the model it names: seconds of compute per welcome
        # (and memory without bound for an absurd model). Recorded here instead.
        profiles.append((model.name, batch_size))

    failures = FailureLog()
    tasks_log = logging.getLogger("transport.tasks")
    tasks_log.addHandler(failures)
    # Thousands of ignored messages and failed rounds each log: keep them out of the captures.
    quiet = logging.getLogger("device_agent.session")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(agent, "_report_profile", no_profiling)
        try:
            yield Agent(agent, link, failures, profiles)
        finally:
            tasks_log.removeHandler(failures)
            quiet.setLevel(level)
            agent.trainer._executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module", autouse=True)
def input_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    TALLY.report(request.config)


async def settle(device: Agent) -> None:
    """Let the agent's background work and any round it started run to their end."""
    # A round started must end by itself (every input here is bad for training).
    await settle_background(
        device.agent._background, device.failures, lambda: device.agent._training
    )


async def drive(device: Agent, handler: str, topic: str, payload: bytes) -> str:
    """Feed one message; returns 'ok', the reason it was refused, or 'known bug'."""
    try:
        device.agent._handle(Message(topic, payload, False))
        outcome = "ok"
    except ALLOWED as exc:
        outcome = f"{type(exc).__name__}.{exc.reason}"
    except Exception as exc:
        if not is_known_bug(exc, KNOWN_BUGS):
            raise
        outcome = f"known bug ({type(exc).__name__})"
    await settle(device)
    TALLY.record(handler, outcome)
    return outcome


# --- strategies ------------------------------------------------------------------------------

# For the fields a round start builds a model from: nothing that parses as a big int (a model
# of image size 10**5 would need terabytes; the ctrl topic is the edge's alone, by ACL).
SMALL_TEXT = st.text(st.characters(exclude_categories=("Cs", "Nd")), max_size=8)
SMALL_WEIRD = (
    st.none()
    | st.booleans()
    | st.integers(-64, 64)
    | st.floats(-64, 64)
    | st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.5])
    | SMALL_TEXT
    | st.binary(max_size=4)
    | st.lists(st.integers(-4, 4), max_size=3)
    | st.dictionaries(SMALL_TEXT, st.integers(-4, 4), max_size=2)
)
# Nothing that could make a round start build a huge model.
NASTY_SMALL = [v for v in NASTY_MSGPACK if not isinstance(v, int | float) or abs(v) <= 64]
TENSORS = tensors([(16, 1, 3, 3), (16,), (32, 16, 3, 3), (32,), (32, 8, 8), (4, 32, 8, 8), (0, 3)])
SESSIONS = st.sampled_from(["s1", "s2", ""]) | st.text(max_size=12)
MODEL_INFO = shaped(
    {
        "v": st.just(1),
        "name": st.sampled_from(["small_cnn", "small_cnn", "vgg5", "resnet"]),
        "in_channels": st.sampled_from([1, 1, 3]) | st.integers(-1, 8),
        "image_size": st.sampled_from([8, 8, 32]) | st.integers(-1, 64),
        "num_classes": st.sampled_from([10, 10]) | st.integers(-1, 20),
    },
    weird=SMALL_WEIRD,
)
TRAIN = shaped(
    {
        "v": st.just(1),
        "lr": st.floats(1e-4, 1.0),
        "batch_size": st.integers(1, 64),
        "batches": st.integers(1, 5),
        # A round that did start would wait this long for each gradient: keep it short.
        "batch_timeout_s": st.floats(0.001, 0.02),
    },
    {
        "momentum": st.floats(0, 0.99),
        "weight_decay": st.floats(0, 0.1),
        "wire_dtype": st.sampled_from(["float32", "float16", "int8", "int4"]),
    },
    weird=SMALL_WEIRD,
)
CTRL_META = {
    "welcome": shaped(
        {
            "v": st.just(1),
            "kind": st.just("welcome"),
            "session": SESSIONS,
            "device_id": st.sampled_from([DEVICE, "dev-1"]),
            "model": MODEL_INFO,
            "batch_size": st.integers(1, 256),
        },
        weird=SMALL_WEIRD,
    ),
    "round_start": shaped(
        {
            "v": st.just(1),
            "kind": st.just("round_start"),
            "session": SESSIONS,
            "round": ROUNDS,
            "split": st.integers(1, 7),
            "model": MODEL_INFO,
            "train": TRAIN,
            "deadline_s": st.floats(0.1, 100),
        },
        weird=SMALL_WEIRD,
    ),
    "round_close": shaped(
        {"v": st.just(1), "kind": st.just("round_close"), "session": SESSIONS, "round": ROUNDS},
        weird=MSGPACK_WEIRD,
    ),
    "round_abort": shaped(
        {
            "v": st.just(1),
            "kind": st.just("round_abort"),
            "session": SESSIONS,
            "round": ROUNDS,
            "reason": st.text(max_size=20),
        },
        weird=MSGPACK_WEIRD,
    ),
    "finish": shaped(
        {"v": st.just(1), "kind": st.just("finish"), "session": SESSIONS, "reason": st.text()},
        weird=MSGPACK_WEIRD,
    ),
}
GRAD_META = shaped(
    {
        "v": st.just(1),
        "kind": st.just("grad"),
        "round": ROUNDS,
        "seq": st.integers(0, 3),
        "loss": FLOATS,
        "correct": st.integers(0, 64),
        "server_s": st.floats(0, 10),
    },
    weird=MSGPACK_WEIRD | MSGPACK_BIG,
)
EDGE_STATUS = shaped(
    {
        "v": st.just(1),
        "kind": st.just("edge_status"),
        "session": SESSIONS,
        "state": st.sampled_from(
            ["starting", "waiting", "training", "evaluating", "finished", "stopped"]
        ),
        "round": st.integers(0, 10**6),
        "rounds": st.integers(0, 10**6),
    },
    {
        "rounds_done": st.integers(0, 10**6),
        "devices": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        "last_round": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        "accuracy": st.none() | FLOATS,
        "loss": st.none() | FLOATS,
    },
)
ERROR_REPORT = shaped(
    {
        "v": st.just(1),
        "kind": st.just("error"),
        "device_id": st.text(max_size=12),
        "channel": st.sampled_from(["hello", "act", "weights", "nope"]),
        "reason": st.text(max_size=12),
        "detail": st.text(max_size=100),
    },
    {"round": st.none() | st.integers(0, 10), "seq": st.none() | st.integers(0, 10)},
)
OWN_CHANNELS = (DeviceChannel.CTRL, DeviceChannel.GRAD, DeviceChannel.ERROR)
OTHER_IDS = st.sampled_from(["dev-1", "dev-00", "edge"]) | st.from_regex(
    DEVICE_ID_PATTERN, fullmatch=True
).filter(lambda d: d != DEVICE)

ANY_PAYLOAD = any_payload(TENSORS)


# --- 1. anything at all on every topic it reads, and on topics it does not -------------------


def topic_for(device: Agent, where: str) -> str:
    if where == "edge status":
        return device.agent.topics.edge_status
    return device.topic(DeviceChannel(where))


TOPICS = [*(c.value for c in OWN_CHANNELS), "edge status"]


@pytest.mark.parametrize("where", TOPICS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=ANY_PAYLOAD, seed=st.integers(0, 2**32))
async def test_anything_on_every_topic(device, where, payload, seed):
    kind, data = payload
    TALLY.examples[f"{where}/any"] += 1
    for edits in [[], *random_edits(seed, 2)]:
        edited = edit_bytes(data, edits)
        if edited or not edits:
            await drive(device, f"{where}/any ({kind})", topic_for(device, where), edited)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    other=OTHER_IDS,
    channel=st.sampled_from(list(DeviceChannel)),
    payload=ANY_PAYLOAD,
    topic=st.text(max_size=30).filter(lambda t: not t.startswith("ares/")),
)
async def test_other_topics_are_ignored(device, other, channel, payload, topic):
    """Another device's topics, our own outbound channels, and random topics."""
    TALLY.examples["other topics"] += 1
    published = len(device.link.published)
    _, data = payload
    for where in (device.topic(channel, other), topic):
        assert await drive(device, "another device's or a random topic", where, data) == "ok"
    assert len(device.link.published) == published
    # Our own device-to-edge channels are not read: a frame there is decoded, then dropped.
    await drive(device, "own outbound channels", device.topic(DeviceChannel.HELLO), data)


# --- 2. messages that look like the real ones ------------------------------------------------


@pytest.mark.parametrize("kind", sorted(CTRL_META))
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), tensors=TENSORS, seed=st.integers(0, 2**32))
async def test_valid_looking_ctrl(device, kind, data, tensors, seed):
    """Control frames of every kind, with random fields and tensors that never fit the model."""
    meta = data.draw(CTRL_META[kind])
    TALLY.examples[f"ctrl/{kind}"] += 1
    topic = device.topic(DeviceChannel.CTRL)
    nasty = NASTY_SMALL if kind in ("welcome", "round_start") else NASTY_MSGPACK
    for frame_meta in [meta, *variants(meta, seed, 3, nasty, ["session"])]:
        statuses = len(device.statuses())
        acts = len(device.link.on(device.topic(DeviceChannel.ACT)))
        started_before = device.agent._started
        outcome = await drive(
            device, f"ctrl/{kind} (valid-looking)", topic, encode_frame(frame_meta, tensors)
        )
        if outcome == "ok" and frame_meta.get("kind") == "round_start":
            start = parse_meta(RoundStart, frame_meta)
            new = device.statuses()[statuses:]
            if (start.session, start.round) == started_before:
                # A repeat of the round last started: ignored, whatever it carries.
                assert not new
            else:
                # It started a round with weights that cannot fit: the round ended (settle
                # waited for it), reported aborted, and sent nothing.
                assert new, "a round start was accepted but the round never reported"
                assert new[-1]["state"] == "aborted"
                assert new[-1]["round"] == start.round
            assert len(device.link.on(device.topic(DeviceChannel.ACT))) == acts
        device.agent.finished.clear()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=GRAD_META, tensors=TENSORS, pending=st.booleans(), seed=st.integers(0, 2**32))
async def test_valid_looking_gradients(device, meta, tensors, pending, seed):
    """Gradient frames, with and without a batch waiting for one."""
    TALLY.examples["grad"] += 1
    agent = device.agent
    loop = asyncio.get_running_loop()
    # The batch waiting, if any, is the one the generated frame names (when it names one).
    named = (meta.get("round"), meta.get("seq"))
    key = named if all(type(n) is int for n in named) else (1, 0)
    for frame_meta in [meta, *variants(meta, seed, 3, NASTY_MSGPACK, ["session"])]:
        future: asyncio.Future[Any] = loop.create_future()
        if pending:
            agent._pending[key] = future
        try:
            outcome = await drive(
                device, "grad (valid-looking)", device.topic(DeviceChannel.GRAD),
                encode_frame(frame_meta, tensors),
            )  # fmt: skip
        finally:
            agent._pending.pop(key, None)
        delivered = future.done()
        if delivered:
            # Only a well-formed gradient of the awaited batch resolves the wait.
            assert outcome == "ok"
            grad = parse_meta(GradientMeta, frame_meta)
            assert (grad.round, grad.seq) == key
            assert set(future.result().tensors) == set(tensors)
        TALLY.outcomes["grad (valid-looking)"]["delivered to a waiting batch"] += delivered
        future.cancel()


@pytest.mark.parametrize("where", ["edge status", "error"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), encoding=ENCODINGS, seed=st.integers(0, 2**32))
async def test_valid_looking_json(device, where, data, encoding, seed):
    fields = data.draw(EDGE_STATUS if where == "edge status" else ERROR_REPORT)
    TALLY.examples[f"{where}/valid-looking"] += 1
    topic = topic_for(device, where)
    hellos = device.topic(DeviceChannel.HELLO)
    for message_fields in [fields, *variants(fields, seed, 4, NASTY_JSON, ["session"])]:
        before = len(device.link.on(hellos))
        session = device.agent.edge_session
        payload = json.dumps(message_fields).encode(encoding)
        outcome = await drive(device, f"{where} (valid-looking)", topic, payload)
        if where == "edge status" and outcome == "ok":
            # A new live edge session gets a hello, anything else nothing.
            new = message_fields["state"] != "stopped" and message_fields["session"] != session
            assert len(device.link.on(hellos)) == before + new


HEADERS = shaped(
    {
        "name": st.sampled_from(["grad", "act", "0.0.weight"]) | st.text(max_size=6),
        "dtype": st.sampled_from([*DTYPES, "float128", "complex64", "<f4", ""]),
        "shape": st.lists(DIMS, max_size=10),
    },
    weird=MSGPACK_WEIRD,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(["grad", "ctrl"]),
    tensors=st.lists(st.tuples(HEADERS, st.integers(0, 64)), min_size=1, max_size=3),
    extra=st.booleans(),
)
async def test_hostile_tensor_headers(device, where, tensors, extra):
    """Headers claiming huge, empty or mistyped shapes and odd dtypes, on gradient and control
    frames (with metadata that would be accepted)."""
    TALLY.examples["hostile tensor headers"] += 1
    if where == "grad":
        meta = to_meta(GradientMeta(round=1, seq=0, loss=1.0, correct=0, server_s=0.1))
    else:
        meta = {"v": 1, "kind": "round_close", "session": "s", "round": 1}
    parts: list[Any] = [meta]
    for header, size in tensors:
        parts.append([header, bytes(size), None] if extra else [header, bytes(size)])
    payload = msgpack.packb(parts, use_bin_type=True)
    await drive(device, f"{where}/hostile tensor headers", topic_for(device, where), payload)


# --- 3. round starts whose weights do not fit ------------------------------------------------


def device_state(split: int) -> dict[str, np.ndarray]:
    spec = ModelSpec.of(MODEL)
    state = build_model(spec).state_dict()
    return state_to_arrays(split_state(state, spec, split)[0])


WEIGHT_DEFECTS = ["missing", "extra", "shape", "renamed", "empty", "scalar", "transposed"]


def round_start(round_no: int, split: int, batch_timeout_s: float = 0.01) -> RoundStart:
    return RoundStart(
        session="s",
        round=round_no,
        cut=split,
        model=MODEL,
        train=TrainConfig(lr=0.01, batch_size=8, batches=2, batch_timeout_s=batch_timeout_s),
        deadline_s=10,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    split=st.integers(1, 5),
    defects=st.frozensets(st.sampled_from(WEIGHT_DEFECTS), min_size=1, max_size=3),
    knob=st.integers(0, 2**31),
    round_no=st.integers(0, 10**6),
)
async def test_a_round_start_with_weights_that_do_not_fit_aborts(
    device, split, defects, knob, round_no
):
    TALLY.examples["round start, weights do not fit"] += 1
    state = device_state(split)
    names = sorted(state)
    name = names[knob % len(names)]
    if "missing" in defects:
        del state[name]
    if "extra" in defects:
        state[["3.1.weight", "x", "0.0.weight.extra", "9.bias"][knob % 4]] = np.zeros(3, "f4")
    if "shape" in defects and name in state:
        state[name] = np.zeros((*state[name].shape, 2), np.float32)
    if "transposed" in defects and name in state:
        state[name] = np.ascontiguousarray(state[name].reshape(-1)[::-1].reshape(-1, 1))
    if "renamed" in defects and name in state:
        state[name.upper()] = state.pop(name)
    if "scalar" in defects and name in state:
        state[name] = np.array(1.0, np.float32)
    if "empty" in defects:
        state = {}
    payload = encode_frame(to_meta(round_start(round_no, split)), state)
    device.agent._started = None  # each example a new round start, not a repeat of the last
    statuses = len(device.statuses())
    acts = len(device.link.on(device.topic(DeviceChannel.ACT)))
    assert await drive(device, "ctrl/round_start (bad weights)", device.topic(DeviceChannel.CTRL),
                       payload) == "ok"  # fmt: skip
    task = device.agent._training
    assert task is not None
    assert task.done()  # settle waited for it: it ended by itself
    new = device.statuses()[statuses:]
    assert [s["state"] for s in new] == ["aborted"]
    assert new[0]["round"] == round_no
    assert len(device.link.on(device.topic(DeviceChannel.ACT))) == acts


async def test_a_round_start_with_good_weights_does_train(device):
    """The positive control: fitting weights start a round that sends activations; a gradient
    of the wrong shape then aborts it."""
    acts = device.topic(DeviceChannel.ACT)
    sent = len(device.link.on(acts))
    agent = device.agent
    payload = encode_frame(to_meta(round_start(7, 2, batch_timeout_s=5)), device_state(2))
    device.agent._started = None  # the agent is shared: not a repeat of a test before
    agent._handle(Message(device.topic(DeviceChannel.CTRL), payload, False))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60  # generous: CI machines can be busy
    while len(device.link.on(acts)) == sent:
        assert loop.time() < deadline, "no activation within 60 s"
        await asyncio.sleep(0.01)
    grad = GradientMeta(round=7, seq=0, loss=1.0, correct=0, server_s=0.1)
    reply = encode_frame(to_meta(grad), {"grad": np.zeros((1, 2), np.float32)})
    agent._handle(Message(device.topic(DeviceChannel.GRAD), reply, False))
    await settle(device)
    last = device.statuses()[-1]
    assert (last["state"], last["round"]) == ("aborted", 7)


# --- bugs found ------------------------------------------------------------------------------
# Fuzzing found inputs escaping _handle as RecursionError/ValueError, and a round start with
# non-finite weights that trained; fixed since (schemas, DeviceTrainer): kept as regressions.


def grad_frame(header: dict[str, Any]) -> bytes:
    """A gradient frame whose one tensor, with no bytes, has this header."""
    meta = to_meta(GradientMeta(round=1, seq=0, loss=1.0, correct=0, server_s=0.1))
    return msgpack.packb([meta, [header, b""]], use_bin_type=True)


@pytest.mark.parametrize(
    ("where", "payload"),
    [
        pytest.param("edge status", b"[" * 100_000 + b"]" * 100_000, id="deeply-nested-json"),
        pytest.param(
            "error", b'{"kind": "error", "seq": ' + b"9" * 5000 + b"}", id="int-over-4300-digits"
        ),
        pytest.param(
            "grad",
            grad_frame({"name": "grad", "dtype": "float32", "shape": [0, 2**63]}),
            id="zero-size-huge-dim",
        ),
        pytest.param(
            "grad",
            grad_frame({"name": "grad", "dtype": [], "shape": []}),
            id="unhashable-dtype",
        ),
        pytest.param(
            "ctrl",
            grad_frame({"name": "grad", "dtype": "float32", "shape": [0, 2**31 - 1, 2**31 - 1]}),
            id="zero-size-huge-product",
        ),
    ],
)
async def test_hostile_inputs_found_by_fuzzing_are_refused(device, where, payload):
    """Each of these must raise SchemaError or CodecError, which the dispatcher handles."""
    with pytest.raises(ALLOWED):
        device.agent._handle(Message(topic_for(device, where), payload, False))


@pytest.mark.parametrize("poison", ["nan", "inf"])
async def test_a_round_start_with_non_finite_weights_never_trains(device, poison):
    """Before the fix the agent trained on them: it sent NaN activations (and their re-sends)
    until the round failed for want of gradients."""
    state = device_state(2)
    state["0.0.weight"] = state["0.0.weight"].copy()
    state["0.0.weight"].reshape(-1)[0] = float(poison)
    acts = device.topic(DeviceChannel.ACT)
    sent = len(device.link.on(acts))
    statuses = len(device.statuses())
    payload = encode_frame(to_meta(round_start(8, 2, batch_timeout_s=0.01)), state)
    device.agent._started = None  # the agent is shared: not a repeat of a test before
    device.agent._handle(Message(device.topic(DeviceChannel.CTRL), payload, False))
    await settle(device)  # the round ends by itself either way (no gradient ever comes)
    assert len(device.link.on(acts)) == sent, "it trained on non-finite weights"
    assert [s["state"] for s in device.statuses()[statuses:]] == ["aborted"]
