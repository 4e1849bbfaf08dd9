"""A serving device: answers its application's requests with the model it was given, alone or
with the serving edge, as the edge's plan says.

Requests come from the device's ``serve/request`` topic (JSON or a frame) and from a folder a
camera drops images into (``watch_dir``). Each runs, in the one compute thread, the device's
blocks up to its cut and stops at the first exit whose confidence meets the threshold
(``serving.inference``); otherwise its cut activation goes to the edge (``serve/act``) and the
device waits for the edge's ``serve/result`` until its deadline, less the time it needs to answer
alone. Then, or at once when the edge is known to be gone (no plan yet, its status offline, the
link down), the device answers from its fallback exit, flagged ``degraded``: no request ever
waits on the network past its deadline. Every answer goes to ``serve/answer``; an id seen
recently is answered again from the cache, not computed again; a bad request gets an error
answer. The composition mirrors the training agent's (``device_agent.session``): its transport
seam, settings and ports, its compute in one worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from device_agent.host import host_environment
from device_agent.link_estimate import LinkEstimate
from device_agent.ports import Environment, Pace
from planner.energy import device_energy_j
from schemas import (
    ModelInfo,
    PowerFigures,
    SchemaError,
    Topics,
    encode_frame,
    parse_json,
    to_json,
    to_meta,
)
from schemas.serving import (
    ParsedRequest,
    RequestError,
    ServeActMeta,
    ServeAnswer,
    ServeCtrl,
    ServeDeviceStatus,
    ServeEdgeStatus,
    ServeHello,
    ServeResult,
    ServeTelemetry,
    Where,
    parse_request,
)
from schemas.topics import ServeChannel
from serving.answers import AnswerCache
from serving.artifact import ModelArtifact, read_artifact
from serving.inference import Answer, DeviceModel, Handoff
from serving.service import LinkService
from serving.settings import ServingDeviceSettings
from serving.watch import DroppedFile, FolderWatch
from serving.window import ServeWindow
from transport import Connect, LastWill, Link, LinkError, Message, mqtt_connector

log = logging.getLogger(__name__)

T = TypeVar("T")
# Beyond the measured time of answering alone: what the event loop and the answer's publish
# may take, so a degraded answer still makes the deadline.
FALLBACK_MARGIN_S = 0.01
FALLBACK_SLACK = 2.0  # times the measured compute of the fallback, kept free before a deadline
# A serving device's transfers are one request's activation each: often below training's 16 KiB
# floor (VGG5's raw image is 12 kB), so with that floor a device sending raw inputs never
# measured its uplink, and a link drop never reached its plan. Above a few kB a transfer at IoT
# rates is bandwidth-bound enough to count (12 kB takes 24 ms at 4 Mbit/s).
SERVE_MIN_SAMPLE_BYTES = 4 * 1024


class ServingDevice(LinkService):
    """One device's serving, over its own link; ``run()`` until cancelled."""

    def __init__(
        self,
        settings: ServingDeviceSettings,
        *,
        environment: Environment | None = None,
        connect: Connect | None = None,
    ) -> None:
        """``environment``: the machine's ports (default: this host as it is; settings that ask
        for emulation need theirs passed). ``connect`` opens the link (default: MQTT to
        ``settings.mqtt``, shaped as the environment says)."""
        if environment is None and settings.emulated:
            raise ValueError(
                f"{settings.device_id}: the settings ask for an emulated board, battery or link; "
                "pass the environment that emulates them"
            )
        super().__init__(f"{settings.device_id}-serve")
        self.settings = settings
        self.device_id = settings.device_id
        self.topics = Topics(settings.mqtt.prefix)
        self.environment = environment or host_environment(settings.sysfs_root)
        self.instance = uuid.uuid4().hex[:12]
        self.counters: Counter[str] = Counter()
        self.plan: ServeCtrl | None = None
        self.edge: ServeEdgeStatus | None = None
        self.artifact: ModelArtifact | None = None
        self.model: DeviceModel | None = None
        self.link_estimate = LinkEstimate.new(SERVE_MIN_SAMPLE_BYTES)
        shaper = self.environment.link.shaper
        self._connect = connect or mqtt_connector(settings.mqtt, shaper=shaper)
        self._answers = AnswerCache(settings.answer_cache)
        self._pending: dict[str, asyncio.Future[ServeResult | None]] = {}
        self._in_flight = 0
        self._window = ServeWindow()
        self._busy_s = 0.0  # compute this window, for an emulated battery
        self._uplink_s = 0.0
        self._forward_s: tuple[float, ...] = ()
        self._exit_s: dict[int, float] = {}

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Load the model, connect and answer requests until cancelled."""
        try:
            if self.settings.torch_threads:
                await self._compute(torch.set_num_threads, self.settings.torch_threads)
            await self._compute(self._load)
            own = [
                (self.topics.device(self.device_id, ch), 1)
                for ch in (ServeChannel.REQUEST, ServeChannel.RESULT, ServeChannel.CTRL)
            ]
            will = LastWill(
                self.topics.device(self.device_id, ServeChannel.STATUS),
                to_json(ServeDeviceStatus(device_id=self.device_id, state="offline")),
            )
            link = self._connect(
                f"ares-serve-{self.device_id}",
                [*own, (self.topics.serve_status, 1)],
                will=will,
                on_connect=self._announce,
            )
            loops = [self._telemetry_loop, self.environment.link.follow]
            if self.settings.watch_dir is not None:
                loops.append(self._watch)
            await self._run_link(link, loops, lambda: self._publish_status("offline"))
        finally:
            self.close()

    def _load(self) -> None:
        """In the compute thread: the artifact, its model and exits, this device's timings."""
        artifact = read_artifact(self.settings.artifact)
        self.artifact = artifact
        model = DeviceModel(artifact.build_model(), artifact.build_exits())
        host_forward, host_exits = model.profile(artifact.spec.input_shape)
        board = self.environment.board
        self._forward_s, self._exit_s = host_forward, host_exits
        if board.emulates_compute:
            board.prepare(self._model_info())
            zeros = tuple(0.0 for _ in host_forward)
            self._forward_s = board.block_times(host_forward, zeros, 1, artifact.spec.name)[0]
        self.model = model
        log.info(
            "%s: serving %s (%d blocks, exits at %s) from %s",
            self.device_id,
            artifact.spec.name,
            model.num_blocks,
            list(model.positions) or "none",
            self.settings.artifact,
        )

    def _model_info(self) -> ModelInfo:
        assert self.artifact is not None
        spec = self.artifact.spec
        return ModelInfo(
            name=spec.name,
            input_shape=spec.input_shape,
            num_classes=spec.num_classes,
            fingerprint=self.artifact.fingerprint,
            labels=self.artifact.labels,
        )

    # --- supervision (runtime.systemd) ----------------------------------------------------------

    def status_line(self) -> str:
        if self._link is not None and not self._link.is_connected:
            return "reconnecting to the broker"
        plan = "no plan" if self.plan is None else f"cut {self.plan.cut}"
        answered = sum(self.counters[k] for k in ("device", "edge", "degraded"))
        return f"serving ({plan}); {answered} answered, {self.counters['errors']} bad requests"

    # --- inbound --------------------------------------------------------------------------------

    async def _dispatch(self, link: Link) -> None:
        async for message in link.messages():
            try:
                self._handle(message)
            except SchemaError as exc:
                self.counters["bad_messages"] += 1
                log.warning(
                    "%s: ignored a bad message on %s: %s", self.device_id, message.topic, exc
                )
            except Exception:  # a bug must not stop the device from reading its messages
                self.counters["internal_errors"] += 1
                log.exception("%s: handling a message on %s failed", self.device_id, message.topic)

    def _handle(self, message: Message) -> None:
        if message.topic == self.topics.serve_status:
            if message.payload:
                self._on_edge_status(parse_json(ServeEdgeStatus, message.payload))
            return
        parsed = self.topics.parse_serve_topic(message.topic)
        if parsed is None or parsed[0] != self.device_id:
            return
        channel = parsed[1]
        if channel is ServeChannel.REQUEST:
            if not message.payload:
                return  # a cleared retained request
            received = asyncio.get_running_loop().time()
            self._background.spawn(self._serve_message(message.payload, received))
        elif channel is ServeChannel.RESULT:
            result = parse_json(ServeResult, message.payload)
            future = self._pending.get(result.id)
            if future is not None and not future.done():
                future.set_result(result)
            else:
                self.counters["late_results"] += 1
        elif channel is ServeChannel.CTRL:
            self._on_ctrl(parse_json(ServeCtrl, message.payload) if message.payload else None)

    def _on_edge_status(self, status: ServeEdgeStatus) -> None:
        before = self.edge
        self.edge = status
        if status.state != "serving":
            self._edge_gone(f"the edge is {status.state}")
        elif before is None or before.session != status.session or before.state != "serving":
            log.info("%s: serving edge session %s is live", self.device_id, status.session)
            self._background.spawn(self._send_hello())

    def _on_ctrl(self, ctrl: ServeCtrl | None) -> None:
        if ctrl is not None and self.artifact is not None:
            if ctrl.device_id != self.device_id:
                return
            if ctrl.fingerprint != self.artifact.fingerprint:
                log.error(
                    "%s: the edge's plan is for model %s, this device serves %s: ignored",
                    self.device_id,
                    ctrl.fingerprint,
                    self.artifact.fingerprint,
                )
                self.counters["foreign_plans"] += 1
                return
            if self.model is not None and ctrl.cut > self.model.num_blocks:
                log.error(
                    "%s: the plan's cut %d is past the model's %d blocks: ignored",
                    self.device_id,
                    ctrl.cut,
                    self.model.num_blocks,
                )
                return
        if ctrl != self.plan:
            log.info(
                "%s: plan %s",
                self.device_id,
                "cleared"
                if ctrl is None
                else f"cut {ctrl.cut}, threshold {ctrl.threshold} ({ctrl.reason})",
            )
        self.plan = ctrl

    def _edge_gone(self, why: str) -> None:
        """Every request waiting for the edge answers alone now."""
        for future in self._pending.values():
            if not future.done():
                future.set_result(None)
        if self._pending:
            log.warning("%s: %s; %d requests answer alone", self.device_id, why, len(self._pending))

    # --- requests -------------------------------------------------------------------------------

    async def _serve_message(self, payload: bytes, received: float) -> None:
        try:
            request = parse_request(payload, max_bytes=self.settings.max_request_bytes)
        except RequestError as exc:
            await self._refuse(exc.request_id, exc.reason, exc.detail, received)
            return
        await self._serve(request, received)

    async def _watch(self) -> None:
        assert self.artifact is not None
        assert self.settings.watch_dir is not None
        watch = FolderWatch(
            self.settings.watch_dir, self.artifact.spec.input_shape, self.settings.watch_interval_s
        )
        log.info("%s: answering images dropped into %s", self.device_id, self.settings.watch_dir)
        async for dropped in watch.files():
            self._background.spawn(self._serve_file(watch, dropped))

    async def _serve_file(self, watch: FolderWatch, dropped: DroppedFile) -> None:
        received = asyncio.get_running_loop().time()
        try:
            if dropped.sample is None:
                await self._refuse(dropped.request_id, "bad_image", dropped.problem or "", received)
            else:
                await self._serve(ParsedRequest(dropped.request_id, dropped.sample, None), received)
        finally:
            await watch.finish(dropped)

    async def _serve(self, request: ParsedRequest, received: float) -> None:
        """Answer one parsed request once: from the cache for an id seen recently."""
        if self._answers.seen(request.id):
            self.counters["duplicate"] += 1
            self._window.duplicates += 1
            cached = self._answers.answered(request.id)
            if cached is not None:  # else it is in flight: its one answer is on its way
                await self._publish_answer(cached)
            return
        assert self.model is not None
        assert self.artifact is not None
        shape = self.artifact.spec.input_shape
        sample = request.input
        if sample.shape == (1, *shape):
            sample = sample[0]
        if sample.shape != shape:
            await self._refuse(
                request.id,
                "bad_shape",
                f"input of shape {sample.shape}; the model takes {shape}",
                received,
            )
            return
        if self._in_flight >= self.settings.max_in_flight:
            await self._refuse(
                request.id, "overloaded", f"{self._in_flight} requests in flight", received
            )
            return
        self._answers.take(request.id)
        self._in_flight += 1
        deadline = received + (request.deadline_ms or self.settings.deadline_ms) / 1000
        try:
            answer, had_exit = await self._answer(request.id, sample, received, deadline)
        except Exception as exc:  # a bug: the request still gets an answer, and it is counted
            self.counters["internal_errors"] += 1
            log.exception("%s: request %s failed", self.device_id, request.id)
            answer, had_exit = self._error(request.id, "internal", str(exc), received), False
        finally:
            self._in_flight -= 1
            self._answers.release(request.id)  # stored below, unless we are being cancelled
        self._answers.store(answer)
        self._window.count(answer, had_exit=had_exit)
        self.counters["degraded" if answer.degraded else answer.where or "errors"] += 1
        await self._publish_answer(answer)

    async def _answer(
        self, request_id: str, sample: np.ndarray, received: float, deadline: float
    ) -> tuple[ServeAnswer, bool]:
        """The answer, and whether the request passed an exit with exits on."""
        model, plan = self.model, self.plan
        assert model is not None
        if plan is None:
            fallback = model.fallback_position(None, self.settings.fallback_exit)
            alone = await self._paced(fallback, model.answer_directly, sample, fallback)
            return self._answered(request_id, alone, received, None, "no plan from the edge"), False
        cut, threshold = plan.cut, plan.threshold
        fallback = model.fallback_position(cut, plan.fallback or self.settings.fallback_exit)
        had_exit = threshold is not None and any(p <= cut for p in model.positions)
        began = time.perf_counter()
        outcome = await self._paced(None, model.run, sample, cut, threshold, fallback)
        if isinstance(outcome, Answer):
            return self._answered(request_id, outcome, received, cut), had_exit
        why = self._edge_problem()
        if why is None:
            reserve = self._reserve_s(cut, fallback)
            result, why = await self._ask_edge(request_id, outcome, plan, deadline - reserve)
            if result is not None:
                edge = Answer(result.label or 0, result.confidence or 0.0, None)
                return self._answered(request_id, edge, received, cut, where="edge"), had_exit
        # Paced as one pass with the blocks before the cut (their time counts towards it).
        alone = await self._paced(
            max(cut, fallback),
            model.answer_alone,
            outcome,
            fallback,
            already_s=time.perf_counter() - began,
        )
        return self._answered(request_id, alone, received, cut, why), had_exit

    def _edge_problem(self) -> str | None:
        """Why the edge cannot be asked now, or None."""
        if self.edge is None:
            return "no serving edge has been seen"
        if self.edge.state != "serving":
            return f"the edge is {self.edge.state}"
        if self._link is None or not self._link.is_connected:
            return "the link to the broker is down"
        return None

    def _reserve_s(self, cut: int, fallback: int) -> float:
        """How long before a deadline the device must stop waiting for the edge to answer in
        time alone: its own time for the blocks past the cut and the fallback's head, doubled,
        and a margin."""
        blocks = sum(self._forward_s[cut:fallback])
        head = self._exit_s.get(fallback, 0.0)
        return FALLBACK_SLACK * (blocks + head) + FALLBACK_MARGIN_S

    async def _ask_edge(
        self, request_id: str, handoff: Handoff, plan: ServeCtrl, until: float
    ) -> tuple[ServeResult | None, str]:
        """The edge's result for ``handoff`` by loop time ``until``, or None and why not."""
        assert self._link is not None
        loop = asyncio.get_running_loop()
        if until <= loop.time():
            return None, "no time left before the deadline to ask the edge"
        meta = ServeActMeta(
            device_id=self.device_id, id=request_id, cut=handoff.cut, session=plan.session
        )
        payload = encode_frame(
            to_meta(meta),
            {"act": handoff.activation},
            max_bytes=self.settings.mqtt.max_payload_bytes,
        )
        future: asyncio.Future[ServeResult | None] = loop.create_future()
        self._pending[request_id] = future
        topic = self.topics.device(self.device_id, ServeChannel.ACT)
        try:
            async with asyncio.timeout_at(until):
                sent = time.perf_counter()
                await self._link.publish(topic, payload, qos=1)
                uplink_s = time.perf_counter() - sent
                self._uplink_s += uplink_s
                self.link_estimate.uplink.add(len(payload), uplink_s)
                self.counters["to_edge"] += 1
                result = await future
        except TimeoutError:
            self.counters["edge_timeouts"] += 1
            return None, "the edge did not answer before the deadline"
        except LinkError as exc:
            return None, f"the activation was not delivered: {exc}"
        finally:
            self._pending.pop(request_id, None)
        if result is None:
            return None, self._edge_problem() or "the edge went away"
        if result.error is not None or result.label is None:
            self.counters["edge_refused"] += 1
            return None, f"the edge refused it: {result.error} {result.reason or ''}".strip()
        return result, ""

    def _answered(
        self,
        request_id: str,
        answer: Answer,
        received: float,
        cut: int | None,
        degraded: str | None = None,
        *,
        where: Where = "device",
    ) -> ServeAnswer:
        assert self.artifact is not None
        labels = self.artifact.labels
        name = labels[answer.label] if labels and answer.label < len(labels) else None
        latency_ms = (asyncio.get_running_loop().time() - received) * 1000
        return ServeAnswer(
            id=request_id,
            device_id=self.device_id,
            label=answer.label,
            label_name=name,
            confidence=min(max(answer.confidence, 0.0), 1.0),
            where=where,
            exit=answer.exit,
            cut=cut,
            degraded=degraded is not None,
            latency_ms=latency_ms,
            reason=degraded,
        )

    async def _refuse(
        self, request_id: str | None, reason: str, detail: str, received: float
    ) -> None:
        """An error answer for a request that cannot be run, counted by reason."""
        self.counters["errors"] += 1
        self.counters[f"rejected.{reason}"] += 1
        self._window.errors += 1
        log.warning("%s: request %s refused: %s: %s", self.device_id, request_id, reason, detail)
        await self._publish_answer(self._error(request_id, reason, detail, received))

    def _error(
        self, request_id: str | None, reason: str, detail: str, received: float
    ) -> ServeAnswer:
        latency_ms = (asyncio.get_running_loop().time() - received) * 1000
        return ServeAnswer(
            id=request_id,
            device_id=self.device_id,
            error=reason,
            reason=detail[:500],
            latency_ms=latency_ms,
        )

    async def _publish_answer(self, answer: ServeAnswer) -> None:
        topic = self.topics.device(self.device_id, ServeChannel.ANSWER)
        try:
            await self._publish(topic, to_json(answer))
        except LinkError as exc:  # the answer stays cached: a repeat of the id gets it again
            self.counters["answers_lost"] += 1
            log.warning("%s: answer to %s not published: %s", self.device_id, answer.id, exc)

    # --- compute --------------------------------------------------------------------------------

    async def _paced(
        self, blocks: int | None, fn: Callable[..., T], *args: Any, already_s: float = 0.0
    ) -> T:
        """``fn(*args)`` in the compute thread; an emulated board then waits out the rest of
        its own time for blocks ``[0, blocks)`` (None: as the outcome says), of which
        ``already_s`` went by before."""
        began = time.perf_counter()
        result = await self._compute(fn, *args)
        board = self.environment.board
        if board.emulates_compute and self.artifact is not None:
            ran = blocks if blocks is not None else _blocks_run(result, self.model)
            pace = Pace(("forward",), ran, 1, self.artifact.spec.name)
            await board.pad(pace, began - already_s)
        self._busy_s += time.perf_counter() - began
        return result

    # --- outbound -------------------------------------------------------------------------------

    async def _announce(self) -> None:
        """On every (re)connect: say we are here, and who we are."""
        await self._publish_status("online")
        if self.edge is not None and self.edge.state == "serving":
            await self._send_hello()

    async def _send_hello(self) -> None:
        assert self.artifact is not None
        s = self.settings
        power = self._power()
        battery = self.environment.battery.reading()
        memory = int(s.memory_mb * 1e6) if s.memory_mb else self.environment.board.memory_bytes
        hello = ServeHello(
            device_id=self.device_id,
            instance=self.instance,
            fingerprint=self.artifact.fingerprint,
            model=self.artifact.spec.name,
            profile=s.profile,
            forward_s=self._forward_s,
            exit_s=self._exit_s,
            power=power,
            uplink_bps=s.uplink_mbps * 1e6 if s.uplink_mbps else None,
            downlink_bps=s.downlink_mbps * 1e6 if s.downlink_mbps else None,
            memory_bytes=memory,
            allowed_cuts=tuple(s.allowed_cuts) if s.allowed_cuts else None,
            battery_pct=battery.percent if battery else None,
        )
        with contextlib.suppress(LinkError):
            await self._publish(
                self.topics.device(self.device_id, ServeChannel.HELLO), to_json(hello)
            )

    def _power(self) -> PowerFigures | None:
        """The power figures the owner declared, else the board's (None: neither)."""
        s = self.settings
        if s.power_compute_w is not None:
            return PowerFigures(
                compute_w=s.power_compute_w,
                transmit_w=s.power_transmit_w or 0.0,
                receive_w=s.power_receive_w or 0.0,
            )
        return self.environment.board.power()

    async def _telemetry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.telemetry_interval_s)
            if self._link is not None and self._link.is_connected:
                with contextlib.suppress(LinkError):
                    await self.publish_telemetry()

    async def publish_telemetry(self) -> None:
        """The window since the last telemetry, and this device's readings; a new window."""
        window, self._window = self._window, ServeWindow()
        busy_s, uplink_s, self._busy_s, self._uplink_s = self._busy_s, self._uplink_s, 0.0, 0.0
        self.environment.battery.account(busy_s, uplink_s, 0.0)
        power = self._power()
        battery = self.environment.battery.reading()
        board = self.environment.power_meter.reading()
        up, down = self.link_estimate.uplink, self.link_estimate.downlink
        plan = self.plan
        telemetry = ServeTelemetry(
            device_id=self.device_id,
            window_s=window.elapsed_s(),
            cut=plan.cut if plan else None,
            threshold=plan.threshold if plan else None,
            requests=window.requests,
            exited=window.exited,
            local=window.local,
            edge=window.edge,
            degraded=window.degraded,
            errors=window.errors,
            duplicates=window.duplicates,
            exit_rate=window.exit_rate,
            **window.latency_summary(),
            uplink_bps=up.bps,
            downlink_bps=down.bps,
            uplink_samples=up.samples,
            downlink_samples=down.samples,
            battery_pct=battery.percent if battery else None,
            charging=battery.charging if battery else None,
            board_power_w=board.total_w if board else None,
            busy_s=busy_s,
            uplink_s=uplink_s,
            energy_j=device_energy_j(power, busy_s, uplink_s, 0.0) if power else None,
        )
        await self._publish(
            self.topics.device(self.device_id, ServeChannel.TELEMETRY), to_json(telemetry)
        )

    async def _publish_status(self, state: Literal["online", "offline"]) -> None:
        status = ServeDeviceStatus(device_id=self.device_id, state=state, instance=self.instance)
        try:
            await self._publish(
                self.topics.device(self.device_id, ServeChannel.STATUS),
                to_json(status),
                retain=True,
            )
        except LinkError as exc:
            log.warning("%s: status not published: %s", self.device_id, exc)


def _blocks_run(outcome: object, model: DeviceModel | None) -> int:
    """How many blocks a run went through: to its exit, its cut, or the whole model."""
    if isinstance(outcome, Handoff):
        return outcome.cut
    if isinstance(outcome, Answer) and outcome.exit is not None:
        return outcome.exit
    return model.num_blocks if model is not None else 0
