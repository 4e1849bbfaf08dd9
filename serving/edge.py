"""The serving edge: finishes the forward passes the devices hand it, and plans their cuts and
thresholds.

Phases, as the training edge's: *start-up* (no network; in the compute thread) reads the artifact,
builds the model and times its blocks here; *run* connects, announces the session on the retained
``{prefix}/serve/status`` (its will says ``offline``), then reads every device's serving topics
while a worker finishes activations and a planner re-plans; *shutdown* says ``stopped`` and
drains its publishes within a bound.

- Activations (``serve/act``) are checked (size, frame, schema, sender, cut, dtype, shape,
  finite) and queued; a bad one gets a ``serve/result`` with the reason and a count. The worker
  takes what is queued (up to ``max_batch``), runs each cut's group as one batch in the compute
  thread and publishes one ``serve/result`` per request.
- A device's hello, status and telemetry update the fleet (``serving.fleet``). A device that
  arrives or leaves, or whose link or exit rate moved past the bounds since its entry was planned
  (``serving.planning``), triggers a re-plan; the policy's own hysteresis keeps entries that gain
  too little. The plan is published retained on ``{prefix}/serve/plan`` and each changed entry
  retained on the device's ``serve/ctrl``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from planner.inference import SERVING_POLICIES
from schemas import CodecError, SchemaError, Topics, decode_frame, parse_json, parse_meta, to_json
from schemas.errors import AresError
from schemas.serving import (
    ServeActMeta,
    ServeCtrl,
    ServeDeviceStatus,
    ServeEdgeState,
    ServeEdgeStatus,
    ServeHello,
    ServePlanMessage,
    ServeResult,
    ServeTelemetry,
    frame_request_id,
)
from schemas.topics import ServeChannel
from serving.artifact import ModelArtifact, read_artifact
from serving.fleet import Fleet
from serving.inference import DeviceModel, EdgeModel
from serving.planning import Decide, ServePlanner, ctrl_message, plan_message
from serving.service import LinkService
from serving.settings import ServeSettings
from transport import Connect, LastWill, Link, LinkError, Message, mqtt_connector

log = logging.getLogger(__name__)
T = TypeVar("T")

ACT_DTYPES = frozenset({"float32", "float16"})


class Refused(AresError):
    """An activation the edge will not finish; ``reason`` is a short code for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Job:
    device_id: str
    request_id: str
    cut: int
    activation: np.ndarray
    received: float  # time.perf_counter() on arrival


class ServeEdge(LinkService):
    """The serving edge service; ``run()`` until cancelled."""

    def __init__(
        self,
        settings: ServeSettings,
        *,
        connect: Connect | None = None,
        decide: Decide | None = None,
    ) -> None:
        """``connect`` opens the link (default: MQTT to ``settings.mqtt``); ``decide`` makes
        the plan from the planner's inputs (default: the settings' policy)."""
        super().__init__("serve-compute")
        self.settings = settings
        self.topics = Topics(settings.mqtt.prefix)
        self.session = uuid.uuid4().hex[:12]
        self.counters: Counter[str] = Counter()
        self.fleet = Fleet(
            assumed_link_bps=settings.assumed_link_mbps * 1e6,
            stale_after_s=settings.telemetry_stale_s,
        )
        self.artifact: ModelArtifact | None = None
        self.model: EdgeModel | None = None
        self.planner: ServePlanner | None = None
        self.plans: list[ServePlanMessage] = []  # every plan published, oldest first
        self._decide = decide
        self._connect = connect or mqtt_connector(settings.mqtt)
        self._jobs: asyncio.Queue[Job] = asyncio.Queue()
        self._replan = asyncio.Event()
        self._replan_reasons: list[str] = []
        self._sent: dict[str, ServeCtrl] = {}  # each device's control message in force

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._compute(self.start_up)
            will = LastWill(self.topics.serve_status, to_json(self._status("offline")))
            channels = (ServeChannel.ACT, ServeChannel.HELLO, ServeChannel.STATUS,
                        ServeChannel.TELEMETRY)  # fmt: skip
            subscriptions = [(self.topics.all_devices(ch), 1) for ch in channels]
            link = self._connect(
                self.settings.client_id, subscriptions, will=will, on_connect=self._announce
            )
            log.info("serving %s as session %s", self.settings.artifact, self.session)
            stopped = to_json(self._status("stopped"))
            await self._run_link(
                link,
                [self._work, self._plan_loop, self._status_loop],
                lambda: self._publish(self.topics.serve_status, stopped, retain=True),
            )
        finally:
            self.close()

    def start_up(self) -> None:
        """In the compute thread: the artifact, the model, the edge's own block timings."""
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        artifact = read_artifact(self.settings.artifact)
        model = artifact.build_model()
        forward_s, _ = DeviceModel(model, nn.ModuleDict()).profile(artifact.spec.input_shape)
        self.artifact, self.model = artifact, EdgeModel(model, artifact.spec)
        decide = self._decide or SERVING_POLICIES.create(self.settings.policy).decide
        self.planner = ServePlanner(artifact, forward_s, self.settings, decide)
        log.info(
            "loaded %s: %s, %d blocks, %.2f ms a sample here",
            self.settings.artifact,
            artifact.spec.name,
            len(forward_s),
            sum(forward_s) * 1000,
        )

    # --- supervision (runtime.systemd) ----------------------------------------------------------

    def status_line(self) -> str:
        return (
            f"serving {len(self.fleet.online())} devices; {self.counters['results']} results, "
            f"{self.counters['rejected']} rejected"
        )

    # --- inbound --------------------------------------------------------------------------------

    async def _dispatch(self, link: Link) -> None:
        async for message in link.messages():
            parsed = self.topics.parse_serve_topic(message.topic)
            if parsed is None:
                self.counters["rejected.unknown_topic"] += 1
                continue
            device_id, channel = parsed
            self.counters[f"messages_in.{channel.value}"] += 1
            try:
                self._handle(device_id, channel, message)
            except Refused as exc:
                self._refuse(device_id, channel, message, exc)
            except Exception:  # a bug must not stop the edge from reading its messages
                self.counters["internal_errors"] += 1
                log.exception("handling %s/%s failed", device_id, channel.value)

    def _handle(self, device_id: str, channel: ServeChannel, message: Message) -> None:
        if not message.payload:
            return  # a cleared retained message
        if len(message.payload) > self.settings.mqtt.max_payload_bytes:
            raise Refused("too_large", f"{len(message.payload)} bytes")
        try:
            if channel is ServeChannel.ACT:
                self._on_act(device_id, message.payload)
            elif channel is ServeChannel.HELLO:
                hello = parse_json(ServeHello, message.payload)
                _check_sender(device_id, hello.device_id)
                self._on_hello(hello)
            elif channel is ServeChannel.STATUS:
                status = parse_json(ServeDeviceStatus, message.payload)
                _check_sender(device_id, status.device_id)
                if status.state == "offline" and self.fleet.offline(device_id):
                    log.info("serving device %s left", device_id)
                    self._ask_replan(f"{device_id} left")
            elif channel is ServeChannel.TELEMETRY:
                telemetry = parse_json(ServeTelemetry, message.payload)
                _check_sender(device_id, telemetry.device_id)
                self._on_telemetry(device_id, telemetry)
        except (SchemaError, CodecError) as exc:
            raise Refused(exc.reason, exc.detail) from None

    def _on_act(self, device_id: str, payload: bytes) -> None:
        assert self.model is not None
        frame = decode_frame(payload, max_bytes=self.settings.mqtt.max_payload_bytes)
        meta = parse_meta(ServeActMeta, frame.meta)
        _check_sender(device_id, meta.device_id)
        record = self.fleet.records.get(device_id)
        if record is not None and self.planner is not None:
            problem = self.planner.fits(record)
            if problem is not None:
                raise Refused("other_model", problem)
        if meta.session != self.session:
            self.counters["other_session"] += 1  # a plan of an earlier session: still served
        if not 0 <= meta.cut < self.model.num_blocks:
            raise Refused(
                "bad_cut", f"cut {meta.cut}; this edge finishes 0..{self.model.num_blocks - 1}"
            )
        act = frame.tensors.get("act")
        if act is None or len(frame.tensors) != 1:
            raise Refused("bad_tensors", f"expected one tensor act, got {sorted(frame.tensors)}")
        if act.dtype.name not in ACT_DTYPES:
            raise Refused("bad_dtype", f"act is {act.dtype.name}")
        shape = self.model.shapes[meta.cut]
        if act.shape not in (shape, (1, *shape)):
            raise Refused(
                "bad_shape", f"act of shape {act.shape} at cut {meta.cut}; expected {shape}"
            )
        if not np.isfinite(act).all():
            raise Refused("not_finite", "act holds NaN or infinite values")
        if self._jobs.qsize() >= self.settings.max_queued:
            # The device answers alone at once instead of waiting out its deadline.
            raise Refused("overloaded", f"{self._jobs.qsize()} activations are waiting")
        self._jobs.put_nowait(Job(device_id, meta.id, meta.cut, act, time.perf_counter()))

    def _on_hello(self, hello: ServeHello) -> None:
        if not self.fleet.hello(hello):
            return
        assert self.planner is not None
        problem = self.planner.fits(self.fleet.records[hello.device_id])
        if problem is not None:
            log.error("serving device %s cannot be planned for: %s", hello.device_id, problem)
            self.counters["other_model"] += 1
            # A plan of an earlier edge (another model) must not stay in force.
            self._sent.pop(hello.device_id, None)
            self._spawn_publish(
                self.topics.device(hello.device_id, ServeChannel.CTRL), b"", retain=True
            )
            return
        log.info("serving device %s arrived (%s)", hello.device_id, hello.profile)
        self._ask_replan(f"{hello.device_id} arrived")

    def _on_telemetry(self, device_id: str, telemetry: ServeTelemetry) -> None:
        record = self.fleet.records.get(device_id)
        if record is None:
            self.counters["rejected.unknown_device"] += 1
            return
        record.take_telemetry(telemetry)
        if self.planner is not None and record.online:
            why = self.planner.moved(self.fleet, device_id)
            if why is not None:
                self._ask_replan(why)

    def _refuse(
        self, device_id: str, channel: ServeChannel, message: Message, exc: Refused
    ) -> None:
        """Count a refused message; an activation's sender gets a result saying why."""
        self.counters["rejected"] += 1
        self.counters[f"rejected.{exc.reason}"] += 1
        log.warning("rejected %s/%s: %s", device_id, channel.value, exc)
        if channel is not ServeChannel.ACT:
            return
        request_id = frame_request_id(message.payload)
        if request_id is None:
            return
        result = ServeResult(
            session=self.session, id=request_id, error=exc.reason, reason=exc.detail[:500]
        )
        self._spawn_publish(self.topics.device(device_id, ServeChannel.RESULT), to_json(result))

    # --- the forward passes ----------------------------------------------------------------------

    async def _work(self) -> None:
        """Finish queued activations: what is waiting together runs as one batch per cut."""
        assert self.model is not None
        model = self.model
        while True:
            jobs = [await self._jobs.get()]
            while len(jobs) < self.settings.max_batch and not self._jobs.empty():
                jobs.append(self._jobs.get_nowait())
            by_cut: dict[int, list[Job]] = {}
            for job in jobs:
                by_cut.setdefault(job.cut, []).append(job)
            for cut, group in by_cut.items():
                try:
                    answers = await self._compute(model.finish, cut, [j.activation for j in group])
                except Exception as exc:  # a bug: every request of the batch is told, not left
                    self.counters["internal_errors"] += 1
                    log.exception("finishing %d activations at cut %d failed", len(group), cut)
                    for job in group:
                        result = ServeResult(
                            session=self.session,
                            id=job.request_id,
                            error="internal",
                            reason=str(exc)[:200],
                        )
                        self._send_result(job, result)
                    continue
                self.counters["batches"] += 1
                for job, answer in zip(group, answers, strict=True):
                    edge_ms = (time.perf_counter() - job.received) * 1000
                    result = ServeResult(
                        session=self.session,
                        id=job.request_id,
                        label=answer.label,
                        edge_ms=edge_ms,
                        confidence=min(max(answer.confidence, 0.0), 1.0),
                    )
                    self.counters["results"] += 1
                    self._send_result(job, result)

    def _send_result(self, job: Job, result: ServeResult) -> None:
        topic = self.topics.device(job.device_id, ServeChannel.RESULT)
        self._spawn_publish(topic, to_json(result))

    # --- planning --------------------------------------------------------------------------------

    def _ask_replan(self, why: str) -> None:
        self._replan_reasons.append(why)
        self._replan.set()

    async def _plan_loop(self) -> None:
        assert self.planner is not None
        assert self.artifact is not None
        planner, artifact = self.planner, self.artifact
        while True:
            await self._replan.wait()
            self._replan.clear()
            reasons, self._replan_reasons = self._replan_reasons, []
            try:
                plan = planner.plan(self.fleet)
            except Exception as exc:  # bad readings must not stop re-planning for good
                self.counters["planning_errors"] += 1
                log.exception("planning failed: %s", exc)
                continue
            if plan is None and (not self.plans or not self.plans[-1].devices):
                continue  # nothing to plan for, and the plan in force says so already
            online = self.fleet.online()
            planned = plan.settings if plan is not None else {}
            inputs = {d: planner.inputs_line(self.fleet, d) for d in online if d in planned}
            why = "; ".join(reasons)
            message = plan_message(self.session, planner, plan, inputs, why, len(self.plans) + 1)
            self.plans.append(message)
            log.info(
                "serving plan %d (%s): %s",
                message.version,
                message.reason,
                ", ".join(
                    f"{d} cut {e.cut} threshold {e.threshold}" for d, e in message.devices.items()
                ),
            )
            await self._publish_quietly(self.topics.serve_plan, to_json(message), retain=True)
            for assignment in plan.assignments if plan is not None else ():
                ctrl = ctrl_message(
                    self.session, artifact.fingerprint, assignment, planner.model.num_blocks
                )
                if self._sent.get(assignment.device_id) == ctrl:
                    continue
                self._sent[assignment.device_id] = ctrl
                topic = self.topics.device(assignment.device_id, ServeChannel.CTRL)
                await self._publish_quietly(topic, to_json(ctrl), retain=True)

    # --- outbound --------------------------------------------------------------------------------

    async def _announce(self) -> None:
        """On every (re)connect: the session is serving (devices say hello to it)."""
        await self._publish_quietly(
            self.topics.serve_status, to_json(self._status("serving")), retain=True
        )

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_interval_s)
            await self._publish_quietly(
                self.topics.serve_status, to_json(self._status("serving")), retain=True
            )

    def _status(self, state: ServeEdgeState) -> ServeEdgeStatus:
        artifact = self.artifact
        devices = {
            d: (f"cut {c.cut}, threshold {c.threshold}" if (c := self._sent.get(d)) else "online")
            for d in self.fleet.online()
        }
        return ServeEdgeStatus(
            session=self.session,
            state=state,
            policy=self.settings.policy,
            devices=devices,
            model=artifact.spec.name if artifact else None,
            fingerprint=artifact.fingerprint if artifact else None,
            counters=dict(sorted(self.counters.items())),
        )

    def _spawn_publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._background.spawn(self._publish_quietly(topic, payload, retain=retain))

    async def _publish_quietly(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish; a failure is logged and counted (a device falls back on its own)."""
        self.counters[f"messages_out.{topic.rsplit('/', 1)[-1]}"] += 1
        try:
            await self._publish(topic, payload, retain=retain)
        except LinkError as exc:
            self.counters["publish_failures"] += 1
            log.warning("%s not published: %s", topic, exc)


def _check_sender(device_id: str, claimed: str) -> None:
    if claimed != device_id:
        raise Refused("id_mismatch", f"payload claims device {claimed!r}")
