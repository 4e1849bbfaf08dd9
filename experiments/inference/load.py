"""The open-loop load generator: one policy's run, seen from the application's side.

On the run's broker it follows the serving edge's status and plan, every device's serving
status, answers and telemetry. It waits, on those messages and never on a clock, until the
processes are up: the edge serving, its plan covering every device, and each device answering a
warm-up request at its planned cut. Then the load starts (time 0 of the run): every request is
published at its planned time whether or not earlier ones were answered (open loop), and each
answer is matched to its request by id. The run ends when every request is answered or its
bound passed (lost), and the devices' serving windows account for every answer they gave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from experiments.inference.aggregate import EnergyWindow, Record
from experiments.inference.workload import PlannedRequest, Workload
from schemas import SchemaError, Topics, parse_json
from schemas.serving import (
    ServeAnswer,
    ServeDeviceStatus,
    ServeEdgeStatus,
    ServePlanMessage,
    ServeTelemetry,
)
from schemas.topics import ServeChannel
from transport import LinkError, Message, MqttLink, MqttSettings

__all__ = ["LoadError", "LoadSettings", "PolicyTrace", "drive"]

log = logging.getLogger(__name__)

WARMUP_ATTEMPT_S = 2.0  # a warm-up request unanswered this long is sent again (new id)
WARMUP_RETRY_S = 0.1  # after an answer off the plan (the device's plan not in yet)


class LoadError(RuntimeError):
    """The run could not be driven: a process died, or it never became ready."""


@dataclass(frozen=True)
class LoadSettings:
    mqtt: MqttSettings
    devices: tuple[str, ...]
    request_bound_s: float  # after its send, a request unanswered this long is lost
    ready_timeout_s: float  # the processes up, the plan in force, warm-ups answered
    telemetry_bound_s: float  # after the load: for the last serving windows


@dataclass
class PolicyTrace:
    """What one policy's run produced; times in seconds from the start of the load."""

    records: list[Record]
    windows: list[EnergyWindow]
    plans: list[tuple[float, dict[str, Any]]]  # (arrival, the plan message)
    online_s: dict[str, float]  # each device's last online status before the load
    warmups: dict[str, int]
    duplicate_answers: int = 0
    unmatched_answers: int = 0
    load_s: float = 0.0  # from the first send to the last


@dataclass
class _State:
    """What the reader saw, on the loop's clock until the load starts."""

    edge: ServeEdgeStatus | None = None
    plan: ServePlanMessage | None = None
    plans: list[tuple[float, ServePlanMessage]] = field(default_factory=list)
    online: dict[str, float] = field(default_factory=dict)
    telemetry: list[tuple[float, ServeTelemetry]] = field(default_factory=list)
    answers: dict[str, tuple[float, ServeAnswer]] = field(default_factory=dict)
    waiting: dict[str, asyncio.Future[ServeAnswer]] = field(default_factory=dict)
    duplicates: int = 0
    unmatched: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


async def drive(
    settings: LoadSettings,
    workload: Workload,
    problem: Callable[[], str | None],
    start_processes: Callable[[], None],
    link_schedules: Callable[[], Coroutine[Any, Any, None] | None],
) -> PolicyTrace:
    """Connect, start the run's processes, wait until ready, drive the load; the trace.

    ``problem`` says why the run cannot go on (a process exited), or None;
    ``link_schedules`` are run from the start of the load (where the launcher runs them).
    """
    topics = Topics(settings.mqtt.prefix)
    watched = [
        (topics.serve_status, 1),
        (topics.serve_plan, 1),
        *((topics.all_devices(ch), 1) for ch in _CHANNELS),
    ]
    state = _State()
    loop = asyncio.get_running_loop()
    link = MqttLink(settings.mqtt, f"ares-bench-load-{os.getpid()}", watched)
    async with link, asyncio.TaskGroup() as tasks:
        # The reader and the link schedules run until the load ends.
        background = [tasks.create_task(_read(link, topics, state))]
        try:
            await link.wait_connected(settings.ready_timeout_s)  # subscribed before any start
            start_processes()
            async with asyncio.timeout(settings.ready_timeout_s):
                await _until(state, problem, lambda: _planned(state, settings.devices))
                warmups = await _warm_up(link, topics, state, settings.devices, workload, problem)
            online = dict(state.online)
            schedules = link_schedules()
            if schedules is not None:
                background.append(tasks.create_task(schedules))
            began = loop.time()
            sent = await _send_all(link, topics, workload.requests, began, problem)
            load_s = loop.time() - began
            await _finish(state, workload, settings, problem, warmups)
        finally:
            for task in background:
                task.cancel()
    return _trace(state, workload, sent, began, online, warmups, load_s)


_CHANNELS = (ServeChannel.ANSWER, ServeChannel.TELEMETRY, ServeChannel.STATUS)


async def _read(link: MqttLink, topics: Topics, state: _State) -> None:
    loop = asyncio.get_running_loop()
    async for message in link.messages():
        try:
            _take(message, topics, state, loop.time())
        except SchemaError as exc:
            log.warning("ignored a bad message on %s: %s", message.topic, exc)
        state.changed.set()


def _take(message: Message, topics: Topics, state: _State, now: float) -> None:
    if not message.payload:
        return
    if message.topic == topics.serve_status:
        state.edge = parse_json(ServeEdgeStatus, message.payload)
        return
    if message.topic == topics.serve_plan:
        plan = parse_json(ServePlanMessage, message.payload)
        state.plans.append((now, plan))
        state.plan = plan
        return
    parsed = topics.parse_serve_topic(message.topic)
    if parsed is None:
        return
    device, channel = parsed
    if channel is ServeChannel.STATUS:
        status = parse_json(ServeDeviceStatus, message.payload)
        if status.state == "online" and not message.retain:
            state.online[device] = now
    elif channel is ServeChannel.TELEMETRY:
        state.telemetry.append((now, parse_json(ServeTelemetry, message.payload)))
    elif channel is ServeChannel.ANSWER:
        answer = parse_json(ServeAnswer, message.payload)
        if answer.id is None:
            state.unmatched += 1
            return
        waiting = state.waiting.pop(answer.id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(answer)
        if answer.id in state.answers:
            state.duplicates += 1
        else:
            state.answers[answer.id] = (now, answer)


async def _until(
    state: _State, problem: Callable[[], str | None], ready: Callable[[], bool]
) -> None:
    """Wait for messages until ``ready()``; a process that exited ends the wait."""
    while not ready():
        why = problem()
        if why is not None:
            raise LoadError(why)
        state.changed.clear()
        try:
            async with asyncio.timeout(1.0):  # only to look at the processes again
                await state.changed.wait()
        except TimeoutError:
            continue


def _planned(state: _State, devices: Sequence[str]) -> bool:
    """The live edge serves and its plan covers every device."""
    edge, plan = state.edge, state.plan
    return (
        edge is not None
        and edge.state == "serving"
        and plan is not None
        and plan.session == edge.session
        and set(devices) <= set(plan.devices)
    )


async def _warm_up(
    link: MqttLink,
    topics: Topics,
    state: _State,
    devices: Sequence[str],
    workload: Workload,
    problem: Callable[[], str | None],
) -> dict[str, int]:
    """Per device, requests until one is answered at the plan's cut, not degraded: the device
    holds its plan. Every device at once; returns how many each took."""
    counts: dict[str, int] = {}

    async def one(device: str) -> None:
        attempt = 0
        while True:
            attempt += 1
            request_id = f"warm-{device}-{attempt}"
            future: asyncio.Future[ServeAnswer] = asyncio.get_running_loop().create_future()
            state.waiting[request_id] = future
            await link.publish(
                topics.device(device, ServeChannel.REQUEST), workload.warmup_payload(request_id)
            )
            try:
                async with asyncio.timeout(WARMUP_ATTEMPT_S):
                    answer = await future
            except TimeoutError:
                why = problem()
                if why is not None:
                    raise LoadError(why) from None
                continue
            finally:
                state.waiting.pop(request_id, None)
            plan = state.plan
            entry = plan.devices.get(device) if plan is not None else None
            if entry is not None and answer.cut == entry.cut and not answer.degraded:
                counts[device] = attempt
                return
            await asyncio.sleep(WARMUP_RETRY_S)  # its plan is on the way: pace the retries

    async with asyncio.TaskGroup() as tasks:
        for device in devices:
            tasks.create_task(one(device))
    return counts


async def _send_all(
    link: MqttLink,
    topics: Topics,
    requests: Sequence[PlannedRequest],
    began: float,
    problem: Callable[[], str | None],
) -> dict[str, float]:
    """Publish each request at its time (open loop: publishes run in the background); the
    send time of each, from ``began``."""
    loop = asyncio.get_running_loop()
    sent: dict[str, float] = {}
    failures: Counter[str] = Counter()

    async def publish(request: PlannedRequest) -> None:
        try:
            await link.publish(topics.device(request.device, ServeChannel.REQUEST), request.payload)
        except LinkError as exc:
            failures[request.device] += 1
            log.warning("request %s not published: %s", request.id, exc)

    async with asyncio.TaskGroup() as tasks:
        for request in requests:
            delay = began + request.at_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[request.id] = loop.time() - began
            tasks.create_task(publish(request))
        why = problem()
        if why is not None:
            raise LoadError(why)
    return sent


async def _finish(
    state: _State,
    workload: Workload,
    settings: LoadSettings,
    problem: Callable[[], str | None],
    warmups: dict[str, int],
) -> None:
    """Until every request is answered (or its bound passed), then until the devices' serving
    windows count every answer they gave (or their bound passed)."""
    ids = {r.id for r in workload.requests}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(settings.request_bound_s):
            await _until(state, problem, lambda: ids <= state.answers.keys())
    expected: Counter[str] = Counter()
    for _, answer in state.answers.values():
        if answer.error is None:
            expected[answer.device_id] += 1
    counted = lambda: _window_requests(state) >= expected  # noqa: E731
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(settings.telemetry_bound_s):
            await _until(state, problem, counted)


def _window_requests(state: _State) -> Counter[str]:
    total: Counter[str] = Counter()
    for _, telemetry in state.telemetry:
        total[telemetry.device_id] += telemetry.requests
    return total


def _trace(
    state: _State,
    workload: Workload,
    sent: dict[str, float],
    began: float,
    online: dict[str, float],
    warmups: dict[str, int],
    load_s: float,
) -> PolicyTrace:
    records = []
    for request in workload.requests:
        got = state.answers.get(request.id)
        sent_s = sent.get(request.id, request.at_s)
        if got is None:
            planned = Record(request.device, request.id, request.sample, request.truth, sent_s)
            records.append(planned)
            continue
        at, answer = got
        records.append(
            Record(
                device=request.device,
                id=request.id,
                sample=request.sample,
                truth=request.truth,
                sent_s=sent_s,
                answered_s=at - began,
                label=answer.label,
                where=answer.where,
                exit=answer.exit,
                cut=answer.cut,
                degraded=answer.degraded,
                error=answer.error,
                device_latency_ms=answer.latency_ms,
            )
        )
    windows = [
        EnergyWindow(t.device_id, at - began, t.requests, t.energy_j, t.busy_s, t.uplink_s)
        for at, t in state.telemetry
    ]
    plans = [(at - began, plan.model_dump(mode="json")) for at, plan in state.plans]
    matched = {r.id for r in workload.requests}
    unmatched = state.unmatched + sum(
        1 for i in state.answers if i not in matched and not i.startswith("warm-")
    )
    return PolicyTrace(
        records=records,
        windows=windows,
        plans=plans,
        online_s={d: at - began for d, at in online.items()},
        warmups=warmups,
        duplicate_answers=state.duplicates,
        unmatched_answers=unmatched,
        load_s=load_s,
    )
