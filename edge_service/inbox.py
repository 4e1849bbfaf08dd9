"""Everything devices send the edge: read by one dispatcher task, validated cheaply, routed.

Registration, statuses and telemetry go to the device registry; a round's activations and
weights to that round's runner (late traffic of a closed round is counted and discarded). Any
bad message becomes a ``Rejected``: counted, logged, and reported to its sender; the dispatcher
never stops reading.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Protocol, TypeVar

from edge_service.liveness import Liveness
from edge_service.outbox import Outbox
from edge_service.registry import DeviceRegistry
from edge_service.rejections import Counters, Rejected
from edge_service.rounds import RoundRunner
from schemas import (
    ActivationMeta,
    CodecError,
    DeviceChannel,
    DeviceStatus,
    ErrorReport,
    Frame,
    Hello,
    ModelInfo,
    SchemaError,
    Telemetry,
    Topics,
    WeightsResync,
    Welcome,
    decode_frame,
    parse_json,
    parse_meta,
    parse_weights_traffic,
)
from schemas.messages import RoundTraffic
from transport import Link, Message

log = logging.getLogger(__name__)
T = TypeVar("T", bound=RoundTraffic)


class Rounds(Protocol):
    """The round in flight, if any (the round driver)."""

    @property
    def current(self) -> RoundRunner | None: ...

    @property
    def round_no(self) -> int: ...

    def resync_weights(self, device_id: str, request: WeightsResync) -> None:
        """The device asks for its round start's weights in full."""
        ...


class ClusterTraffic(Protocol):
    """What reads the edge replicas' own topics (edge_service.cluster), if this edge is one."""

    def handle(self, message: Message) -> bool:
        """Take a message on a cluster topic; False if it is on none."""
        ...

    @property
    def coordinating(self) -> bool:
        """Whether this replica holds the coordinator role (it welcomes the devices)."""
        ...


class Inbox:
    def __init__(
        self,
        *,
        session: str,
        topics: Topics,
        counters: Counters,
        devices: DeviceRegistry,
        outbox: Outbox,
        liveness: Liveness,
        rounds: Rounds,
        model: ModelInfo,
        batch_size: int,
        max_payload_bytes: int,
        cluster: ClusterTraffic | None = None,
    ) -> None:
        self.session = session
        self.topics = topics
        self.counters = counters
        self.devices = devices
        self.outbox = outbox
        self.liveness = liveness
        self.rounds = rounds
        self.model = model
        self.batch_size = batch_size
        self.max_payload_bytes = max_payload_bytes
        self.cluster = cluster

    async def dispatch(self, link: Link) -> None:
        """Read and handle every message until the link closes."""
        async for message in link.messages():
            if self.cluster is not None and self.cluster.handle(message):
                continue
            parsed = self.topics.parse_device_topic(message.topic)
            if parsed is None:
                self.counters.add("rejected.unknown_topic")
                continue
            device_id, channel = parsed
            self.counters.add(f"messages_in.{channel.value}")
            self.counters.add(f"bytes_in.{channel.value}", len(message.payload))
            try:
                self.handle(device_id, channel, message)
            except Rejected as exc:
                self.reject(device_id, channel, exc)
            except Exception:  # a bug must not stop the edge from reading its messages
                self.counters.add("internal_errors")
                log.exception("handling %s/%s failed", device_id, channel.value)

    def handle(self, device_id: str, channel: DeviceChannel, message: Message) -> None:
        """One message from ``device_id``; raises ``Rejected`` if it is bad."""
        if not message.payload:
            return  # a cleared retained message
        if len(message.payload) > self.max_payload_bytes:
            raise Rejected("too_large", f"{len(message.payload)} bytes")
        try:
            if channel is DeviceChannel.HELLO:
                self._on_hello(device_id, parse_json(Hello, message.payload))
            elif channel is DeviceChannel.STATUS:
                self._on_status(device_id, parse_json(DeviceStatus, message.payload))
            elif channel is DeviceChannel.TELEMETRY:
                telemetry = parse_json(Telemetry, message.payload)
                _check_sender(device_id, telemetry.device_id)
                self.devices.take_telemetry(device_id, telemetry)
            elif channel is DeviceChannel.ACT:
                parse_act = partial(parse_meta, ActivationMeta)
                traffic = self._round_traffic(device_id, message, parse_act)
                if traffic is not None:
                    runner, act, frame = traffic
                    runner.deliver_activation(device_id, act, frame)
            elif channel is DeviceChannel.WEIGHTS:
                uploaded = self._round_traffic(device_id, message, parse_weights_traffic)
                if uploaded is None:
                    pass
                elif isinstance(uploaded[1], WeightsResync):
                    self.rounds.resync_weights(device_id, uploaded[1])
                else:
                    uploaded[0].deliver_weights(device_id, uploaded[1], uploaded[2])
        except (SchemaError, CodecError) as exc:
            raise Rejected(exc.reason, exc.detail) from None

    def reject(
        self, device_id: str, channel: DeviceChannel, exc: Rejected, seq: int | None = None
    ) -> None:
        """Count a rejected message and tell its sender why."""
        self.counters.add(f"rejected.{exc.reason}")
        log.warning("rejected %s/%s: %s", device_id, channel.value, exc)
        report = ErrorReport(
            device_id=device_id,
            channel=channel.value,
            reason=exc.reason,
            detail=exc.detail[:500],
            round=self.rounds.round_no or None,
            seq=seq,
        )
        self.outbox.report_error(report)

    def reject_in_round(self, device_id: str, exc: Rejected, seq: int | None) -> None:
        self.reject(device_id, DeviceChannel.ACT, exc, seq)

    def _round_traffic(
        self, device_id: str, message: Message, parse: Callable[[object], T]
    ) -> tuple[RoundRunner, T, Frame] | None:
        """Decode a device's frame for a round in flight; None if that round is closed, the
        frame belongs to another attempt of it (one repeated since), or to another replica's
        device."""
        self.devices.registered(device_id)
        runner = self.rounds.current
        if self.cluster is not None and (runner is None or device_id not in runner.devices):
            # Another replica serves this device: not ours to decode, let alone to refuse.
            self.counters.add("others_traffic")
            return None
        frame = decode_frame(message.payload, max_bytes=self.max_payload_bytes)
        meta = parse(frame.meta)
        _check_sender(device_id, meta.device_id)
        if runner is None or runner.is_stale(meta):
            # Late traffic of a closed round or attempt: discarded and counted, never applied.
            self.counters.add("stale_messages")
            return None
        return runner, meta, frame

    def _on_hello(self, device_id: str, hello: Hello) -> None:
        _check_sender(device_id, hello.device_id)
        model = self.model
        problem = data_problem(hello, model)
        if problem is not None:
            raise Rejected("incompatible", f"{hello.dataset}: {problem}")
        restarted = self.devices.register(device_id, hello)
        runner = self.rounds.current
        if restarted and runner is not None:
            # A new agent process has lost the round's state: it leaves the round now.
            runner.drop(device_id, "device restarted mid-round")
        log.info("device %s registered (%d samples)", device_id, hello.samples)
        if self.cluster is not None and not self.cluster.coordinating:
            return  # every replica registers the device; the coordinator welcomes it
        welcome = Welcome(
            session=self.session, device_id=device_id, model=model, batch_size=self.batch_size
        )
        self.outbox.spawn(self.outbox.send_ctrl(device_id, welcome))

    def _on_status(self, device_id: str, status: DeviceStatus) -> None:
        _check_sender(device_id, status.device_id)
        record = self.devices.get(device_id)
        if record is None:
            return  # not registered (a retained status from an earlier run): hello comes first
        record.last_seen = time.time()
        self.liveness.answered(device_id, status.nonce)
        runner = self.rounds.current
        if status.state == "offline":
            self.liveness.suspect(device_id)
        elif status.state == "refused":
            if record.state != "refused":
                log.error("device %s refused this session: %s", device_id, status.detail)
            self.devices.refuse(device_id)
        elif status.state == "aborted":
            if runner is not None and status.round == runner.round_no:
                runner.drop(device_id, "the device gave up the round", "aborted")
        else:
            record.state = status.state


def _check_sender(device_id: str, claimed: str) -> None:
    if claimed != device_id:
        raise Rejected("id_mismatch", f"payload claims device {claimed!r}")


def data_problem(hello: Hello, model: ModelInfo) -> str | None:
    """Why the data a device declared cannot train ``model`` (one line), or None."""
    if hello.input_shape != model.input_shape:
        return f"samples of shape {hello.input_shape}; the model takes {model.input_shape}"
    if hello.num_classes > model.num_classes:
        return f"{hello.num_classes} classes; the model has {model.num_classes}"
    ours, theirs = model.labels, hello.labels
    if ours is not None and theirs is not None and theirs != ours[: len(theirs)]:
        return (
            f"classes {', '.join(theirs)} are not the edge's {', '.join(ours)} in that order: "
            "give the device a folder for every class (an empty one will do) or set its classes"
        )
    return None
