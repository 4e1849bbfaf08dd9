"""A device's protocol session: registers with the edge, trains its part round after round.

One dispatcher task reads the device's topics; a round start launches the round's training task
(cancelled by an abort or a newer round start); each batch goes forward, publishes its
activations, awaits the gradient with a timeout (re-sending the batch if it is late: the edge
never applies a batch twice), goes backward and steps. The MQTT link reconnects by itself.

The compute is a :class:`Trainer`'s: ``device_agent.agent`` gives the session the torch one (the
agent proper); the scale benchmark's light devices give it one that only sleeps. What the
session asks of the machine (pacing, battery, power meter, link shaping) is an
:class:`~device_agent.ports.Environment`. Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from device_agent.drift import DeviceTimings, compute_time_s
from device_agent.host import host_environment
from device_agent.link_estimate import LinkEstimate
from device_agent.ports import Environment, HostTimings, Pace
from device_agent.settings import DeviceSettings
from device_agent.weight_base import WeightBase
from schemas import (
    PROTOCOL_VERSION,
    ActivationMeta,
    CodecError,
    ComputeProfile,
    DeviceChannel,
    DeviceStatus,
    EdgeStatus,
    ErrorReport,
    Finish,
    Frame,
    GradientMeta,
    Hello,
    ModelInfo,
    Ping,
    PowerFigures,
    ProtocolVersion,
    RoundAbort,
    RoundClose,
    RoundStart,
    SchemaError,
    Telemetry,
    Topics,
    WeightsMeta,
    WeightsResync,
    Welcome,
    WireTensor,
    decode_frame,
    encode_frame,
    parse_ctrl,
    parse_json,
    parse_meta,
    to_json,
    to_meta,
    wire_format,
)
from schemas.errors import AresError
from schemas.messages import WIRE_DTYPES, DeviceState
from schemas.weight_delta import WEIGHT_WIRES
from transport import Connect, LastWill, Link, LinkError, Message, mqtt_connector
from transport.tasks import BackgroundTasks, cancel_and_wait

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"
MAX_EXCUSED_RETRIES = 10  # batch re-sends not counted because the broker connection broke
T = TypeVar("T")


class RoundFailed(AresError, RuntimeError):
    """The round cannot go on on this device (the edge stopped answering, or answered wrong)."""


class NoGradient(RoundFailed):
    """A batch's gradient did not come back after every re-send."""


@dataclass
class RoundTally:
    """What one round cost this device."""

    busy_s: float = 0.0  # compute
    host_s: float = 0.0  # of which the host computed (the rest: an emulated board's padding)
    uplink_s: float = 0.0
    downlink_s: float = 0.0
    loss_sum: float = 0.0  # summed over samples
    samples: int = 0
    batches: int = 0
    round_trips: list[float] = field(default_factory=list)
    behind_s: float = 0.0  # emulation: how far the host fell behind the emulated device


class Trainer(Protocol):
    """The device's compute, as the session calls it: every step is awaited, however long.

    ``start_round`` comes first in a round; then ``forward`` and ``backward`` alternate (the
    gradient comes from the edge), or ``local_step`` when the device holds the whole model.
    """

    @property
    def samples(self) -> int:
        """How many training samples this device holds (its hello declares them)."""
        ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def labels(self) -> tuple[str, ...] | None:
        """The class names of the device's data in label order, where it has them."""
        ...

    @property
    def trains_whole_model(self) -> bool:
        """This round's cut leaves every block on the device."""
        ...

    async def start_round(self, start: RoundStart, state: Mapping[str, np.ndarray]) -> None:
        """Build the device part for the round's cut from the edge's weights ``state``."""
        ...

    async def forward(self) -> tuple[WireTensor, np.ndarray]:
        """The next batch forward to the cut: (activations in the round's wire format, labels)."""
        ...

    async def backward(self, grad: WireTensor) -> None:
        """Finish the batch with the gradient of its activations (in the wire format: the
        trainer dequantises it in its own thread), and step."""
        ...

    async def local_step(self) -> tuple[float, int]:
        """A whole training step on the device: (loss, batch size)."""
        ...

    async def state(self) -> dict[str, np.ndarray]:
        """The device part's weights, to upload at the round's end."""
        ...

    async def profile(
        self, model: ModelInfo, batch_size: int, *, urgent: bool = False
    ) -> HostTimings:
        """This host's per-block times of ``model`` at ``batch_size``. ``urgent``: the edge is
        waiting for them (registration), so known ones may be answered beside other compute."""
        ...

    async def check_model(self, model: ModelInfo) -> str | None:
        """None if this device builds the edge's ``model`` as the edge does (same architecture
        fingerprint); else why not, in one line."""
        ...


class SessionEvents:
    """What a session went through, for an observer (the scale benchmark counts it); by default
    nothing listens. Called in the session's event loop; each must return at once."""

    def hello(self) -> None:
        """A hello was sent."""

    def ctrl(self, message: Welcome | RoundStart | RoundClose | RoundAbort | Ping | Finish) -> None:
        """The edge sent a control message (before the session acts on it)."""

    def rejected(self, error: ErrorReport) -> None:
        """The edge rejected something the session sent."""

    def resent(self) -> None:
        """A batch whose gradient was late was sent again."""

    def gradient(self, since_sent_s: float, server_s: float) -> None:
        """A batch's gradient arrived ``since_sent_s`` after the batch was first sent; the edge
        spent ``server_s`` of that."""

    def uploaded(self) -> None:
        """A round's weights were uploaded."""

    def weights_resync(self) -> None:
        """The session asked for full weights: it could not apply a round start's deltas."""

    def round_failed(self, error: Exception) -> None:
        """A round failed on this side (NoGradient: the edge never answered a batch)."""


TrainerT = TypeVar("TrainerT", bound=Trainer)


class DeviceSession(Generic[TrainerT]):
    """One device's side of the protocol, over its own link, with ``trainer`` doing the compute."""

    def __init__(
        self,
        settings: DeviceSettings,
        trainer: TrainerT,
        *,
        environment: Environment | None = None,
        connect: Connect | None = None,
        events: SessionEvents | None = None,
    ) -> None:
        """``environment``: the machine's ports (default: this host as it is; settings that ask
        for emulation need theirs passed). ``connect`` opens the link (default: MQTT to
        ``settings.mqtt``, shaped as the environment says)."""
        if environment is None:
            if settings.emulated:
                raise ValueError(
                    f"{settings.device_id}: the settings ask for an emulated board, battery or "
                    "link; pass the environment that emulates them"
                )
            environment = host_environment(settings.sysfs_root)
        self.settings = settings
        self.device_id = settings.device_id
        self.topics = Topics(settings.mqtt.prefix)
        self.trainer = trainer
        self.environment = environment
        self.events = events or SessionEvents()
        self.instance = uuid.uuid4().hex[:12]
        self.edge_session: str | None = None
        # The protocol version the edge speaks: we answer in it (an older edge refuses newer).
        self.edge_protocol: ProtocolVersion = PROTOCOL_VERSION
        self.rounds_done = 0
        # Why this device refused the edge's session (it has another model); None: it takes part.
        self.refused: str | None = None
        self.finished = asyncio.Event()
        self._link: Link | None = None
        self._training: asyncio.Task[None] | None = None
        self._training_round: int | None = None
        self._training_attempt = 0  # which start of that round (a round may be repeated)
        # The edge asked us to wrap this (round, attempt) up.
        self._closing: tuple[int, int] | None = None
        # The round start last taken: (edge session, round), and its attempt.
        self._started: tuple[str, int] | None = None
        self._started_attempt = 0
        # Set when a lost message may want re-sending at once: we reconnected, or the edge did
        # (its status arrives again). A batch awaiting its gradient is then re-sent, not after
        # its timeout: a broker restart loses what it had acknowledged but not delivered.
        self._resend_now = asyncio.Event()
        self._pending: dict[tuple[int, int], asyncio.Future[Frame]] = {}
        self._background = BackgroundTasks()
        self._profiled: DeviceTimings | None = None  # our block timings, profiled at registration
        self.weight_base = WeightBase()  # the round start we hold, for weight deltas
        self._timings: ComputeProfile | None = None  # as we run them now: what the edge plans with
        self.link = LinkEstimate.new()
        self._connect = connect or mqtt_connector(settings.mqtt, shaper=environment.link.shaper)
        self._speed_ratio: float | None = None
        # The first periodic telemetry; a fleet started at once may spread its own.
        self.first_telemetry_s = settings.telemetry_interval_s
        self.ready = asyncio.Event()  # connected and listening (systemd's READY=1)
        self._dispatcher: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Serve rounds until the edge says training is over (if exit_on_finish) or cancelled."""
        own = [
            (self.topics.device(self.device_id, ch), 1)
            # Our own status too: a stranger's "offline" is put right (see _on_own_status).
            for ch in (DeviceChannel.CTRL, DeviceChannel.GRAD, DeviceChannel.ERROR,
                       DeviceChannel.STATUS)
        ]  # fmt: skip
        subscriptions = [*own, (self.topics.edge_status, 1)]
        will = LastWill(
            self.topics.device(self.device_id, DeviceChannel.STATUS),
            to_json(DeviceStatus(device_id=self.device_id, state="offline"), self.edge_protocol),
        )
        link = self._connect(
            f"ares-dev-{self.device_id}", subscriptions, will=will, on_connect=self._announce
        )
        self._link = link  # before connecting: on_connect publishes through it
        async with link, asyncio.TaskGroup() as tasks:
            dispatcher = tasks.create_task(self._dispatch(link), name="device-dispatch")
            self._dispatcher = dispatcher
            self.ready.set()
            telemetry = tasks.create_task(self._telemetry_loop(), name="device-telemetry")
            shaping = tasks.create_task(self.environment.link.follow(), name="link-shaping")
            try:
                if self.settings.exit_on_finish:
                    await self.finished.wait()
                else:
                    await asyncio.Event().wait()  # until cancelled (SIGTERM, Ctrl-C)
            finally:
                await self._stop_training()
                dispatcher.cancel()
                telemetry.cancel()
                shaping.cancel()
                await self._background.drain(2.0)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await self._publish_status("offline")

    # --- inbound --------------------------------------------------------------------------------

    async def _dispatch(self, link: Link) -> None:
        async for message in link.messages():
            try:
                self._handle(message)
            except (SchemaError, CodecError) as exc:
                log.warning(
                    "%s: ignored a bad message on %s: %s", self.device_id, message.topic, exc
                )
            except Exception:  # a bug must not stop the agent from reading its messages
                log.exception("%s: handling a message on %s failed", self.device_id,
                              message.topic)  # fmt: skip

    def _handle(self, message: Message) -> None:
        if not message.payload:
            return
        if message.topic == self.topics.edge_status:
            self._on_edge_status(parse_json(EdgeStatus, message.payload))
            return
        parsed = self.topics.parse_device_topic(message.topic)
        if parsed is None or parsed[0] != self.device_id:
            return
        channel = parsed[1]
        if channel is DeviceChannel.STATUS:
            self._on_own_status(parse_json(DeviceStatus, message.payload))
            return
        if channel is DeviceChannel.ERROR:
            error = parse_json(ErrorReport, message.payload)
            self.events.rejected(error)
            log.warning("%s: the edge rejected %s: %s %s", self.device_id, error.channel,
                        error.reason, error.detail)  # fmt: skip
            return
        frame = decode_frame(message.payload, max_bytes=self.settings.mqtt.max_payload_bytes)
        if channel is DeviceChannel.GRAD:
            grad = parse_meta(GradientMeta, frame.meta)
            if grad.attempt != self._training_attempt:
                return  # an earlier start of the round: its gradients are not this one's
            future = self._pending.get((grad.round, grad.seq))
            if future is not None and not future.done():
                future.set_result(frame)
            return
        if channel is DeviceChannel.CTRL:
            self._on_ctrl(parse_ctrl(frame.meta), frame)

    def _on_edge_status(self, status: EdgeStatus) -> None:
        if status.state == "stopped":
            return
        self.edge_protocol = status.v
        if status.session == self.edge_session:
            self._resend_now.set()  # the edge (re)announced itself: it may have missed a batch
            return
        # A new edge session (the edge started or restarted): register with it.
        log.info("%s: edge session %s is live", self.device_id, status.session)
        self.edge_session = status.session
        self._background.spawn(self._send_hello())

    def _on_own_status(self, status: DeviceStatus) -> None:
        """Our retained status says we are offline while we run: someone else published it (or
        an old will). Say what is true; the edge's ping (_on_ctrl) settles it for the edge."""
        if status.state == "offline" and status.device_id == self.device_id:
            log.warning("%s: our status reads offline, but we are here: correcting it",
                        self.device_id)  # fmt: skip
            self._background.spawn(self._publish_status(*self._state()))

    def _on_ctrl(
        self,
        message: Welcome | RoundStart | RoundClose | RoundAbort | Ping | Finish,
        frame: Frame,
    ) -> None:
        self.events.ctrl(message)
        if isinstance(message, Welcome):
            log.info("%s: registered with edge session %s", self.device_id, message.session)
            self.edge_session, self.edge_protocol = message.session, message.v
            self._background.spawn(self._join(message))
        elif isinstance(message, Ping):
            state, round_no = self._state()
            self._background.spawn(self._publish_status(state, round_no, nonce=message.nonce))
        elif isinstance(message, RoundStart):
            started = (message.session, message.round)
            if started == self._started and message.attempt == self._started_attempt:
                # A repeat (the edge re-sends round starts after a reconnect, or QoS 1
                # redelivery): starting over would re-send batches the edge already applied.
                # Another attempt of the round (another edge replica repeats it) is no repeat.
                log.info("%s: round %d (attempt %d) already started; repeat ignored",
                         self.device_id, message.round, message.attempt)  # fmt: skip
                return
            self._started, self._started_attempt = started, message.attempt
            self._cancel_training()
            self._training_round, self._training_attempt = message.round, message.attempt
            self._training = asyncio.create_task(
                self._train_round(message, frame),
                name=f"round-{message.round}.{message.attempt}",
            )
        elif isinstance(message, RoundClose):
            if self._trains(message.round, message.attempt):
                self._closing = (message.round, message.attempt)
        elif isinstance(message, RoundAbort):
            if self._trains(message.round, message.attempt):
                log.warning(
                    "%s: round %d aborted: %s", self.device_id, message.round, message.reason
                )
                self._cancel_training()
                self._re_register()
        else:
            log.info("%s: edge finished: %s", self.device_id, message.reason)
            self._cancel_training()
            self.finished.set()

    def _trains(self, round_no: int, attempt: int) -> bool:
        """Whether the round start last trained is this attempt of this round (a close or an
        abort of another attempt is not about it)."""
        return (round_no, attempt) == (self._training_round, self._training_attempt)

    # --- training -------------------------------------------------------------------------------

    async def _train_round(self, start: RoundStart, frame: Frame) -> None:
        round_no, train = start.round, start.train
        tally = RoundTally()
        try:
            try:  # off the event loop: deltas are added to the start we hold
                weights = await asyncio.to_thread(self.weight_base.start, start, frame)
            except CodecError as exc:
                await self._ask_full_weights(start, exc)
                return
            await self.trainer.start_round(start, weights)
            await self._prepare_board(start.model)
            await self._publish_status("training", round_no)
            log.info("%s: round %d, cut %d, %d batches", self.device_id, round_no, start.cut,
                     train.batches)  # fmt: skip
            for seq in range(train.batches):
                if self._closing == (round_no, start.attempt):
                    log.warning("%s: round %d closed by the edge after %d of %d batches",
                                self.device_id, round_no, seq, train.batches)  # fmt: skip
                    break
                if self.trainer.trains_whole_model:
                    pace = Pace(("forward", "backward"), start.cut, train.batch_size,
                                start.model.name)  # fmt: skip
                    loss, batch = await self._timed(tally, pace, self.trainer.local_step())
                else:
                    loss, batch = await self._split_batch(start, seq, tally)
                tally.loss_sum += loss * batch
                tally.samples += batch
                tally.batches += 1
            self.environment.battery.account(tally.busy_s, tally.uplink_s, tally.downlink_s)
            if tally.behind_s > 0.05 * tally.busy_s:
                log.warning("%s: this host cannot keep up with the emulated %s: %.2f s behind "
                            "in round %d", self.device_id, self.settings.profile, tally.behind_s,
                            round_no)  # fmt: skip
            await self._upload_weights(start, tally)
            self.rounds_done += 1
            log.info("%s: round %d done: %d samples, busy %.2f s", self.device_id, round_no,
                     tally.samples, tally.busy_s)  # fmt: skip
            self._follow_drift(start, tally)
            await self._publish_status("idle", round_no)
            with contextlib.suppress(LinkError):  # the periodic telemetry will follow
                await self._publish_telemetry(round_no, tally)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.events.round_failed(exc)
            if isinstance(exc, RoundFailed):
                log.warning("%s: round %d failed: %s", self.device_id, round_no, exc)
            else:
                log.exception("%s: round %d failed", self.device_id, round_no)
            # Tell the edge at once instead of letting it wait for the round deadline.
            await self._publish_status("aborted", round_no)
            self._re_register()

    async def _split_batch(
        self, start: RoundStart, seq: int, tally: RoundTally
    ) -> tuple[float, int]:
        """Forward to the cut, exchange with the edge, backward; returns (loss, batch size)."""
        model, batch, cut = start.model.name, start.train.batch_size, start.cut
        act, labels = await self._timed(tally, Pace(("forward",), cut, batch, model),
                                        self.trainer.forward())  # fmt: skip
        meta = ActivationMeta(
            device_id=self.device_id, round=start.round, attempt=start.attempt, seq=seq
        )
        payload = encode_frame(
            to_meta(meta, self.edge_protocol), {"act": act, "labels": labels},
            max_bytes=self.settings.mqtt.max_payload_bytes,
        )  # fmt: skip
        reply = await self._exchange(start.round, seq, payload, start.train.batch_timeout_s, tally)
        await self._timed(tally, Pace(("backward",), cut, batch, model),
                          self.trainer.backward(self._check_grad(reply, act)))  # fmt: skip
        return parse_meta(GradientMeta, reply.meta).loss, int(labels.shape[0])

    async def _upload_weights(self, start: RoundStart, tally: RoundTally) -> None:
        state = await self.trainer.state()
        # Deltas against the round's start where its weight wire asks (off the event loop).
        encoded = await asyncio.to_thread(self.weight_base.upload, start, state)
        weights = WeightsMeta(
            device_id=self.device_id, round=start.round, attempt=start.attempt, cut=start.cut,
            samples=tally.samples, batches=tally.batches, busy_s=tally.busy_s,
            loss=tally.loss_sum / tally.samples if tally.samples else None,
            rtt_median_s=statistics.median(tally.round_trips) if tally.round_trips else None,
            uplink_s=tally.uplink_s, downlink_s=tally.downlink_s, behind_s=tally.behind_s,
            weights_base=start.round if encoded.deltas else None,
        )  # fmt: skip
        payload = encode_frame(
            to_meta(weights, self.edge_protocol),
            encoded.tensors,
            max_bytes=self.settings.mqtt.max_payload_bytes,
        )
        sent = time.perf_counter()
        await self._publish(self.topics.device(self.device_id, DeviceChannel.WEIGHTS), payload)
        self.link.uplink.add(len(payload), time.perf_counter() - sent)
        self.weight_base.sent(start)
        self.events.uploaded()

    async def _ask_full_weights(self, start: RoundStart, problem: CodecError) -> None:
        """The round start's deltas do not fit the start we hold (we restarted, missed a
        round, or they are malformed): ask the edge for the round start with full weights."""
        self._started = None  # the round start that answers is no repeat
        self.events.weights_resync()
        log.warning("%s: cannot apply round %d's weights (%s); asking for them in full",
                    self.device_id, start.round, problem)  # fmt: skip
        request = WeightsResync(
            device_id=self.device_id, round=start.round, attempt=start.attempt,
            weights_base=start.weights_base,
            held=self.weight_base.held_round, reason=str(problem)[:200],
        )  # fmt: skip
        payload = encode_frame(
            to_meta(request, self.edge_protocol), max_bytes=self.settings.mqtt.max_payload_bytes
        )
        await self._publish(self.topics.device(self.device_id, DeviceChannel.WEIGHTS), payload)

    async def _exchange(
        self, round_no: int, seq: int, payload: bytes, wait_s: float, tally: RoundTally
    ) -> Frame:
        """Publish one batch's activations and wait for its gradient, re-sending if late.

        Times both directions for the link estimate: the publish returns at the broker's
        PUBACK (uplink); the round trip minus that and the edge's own time is the downlink.
        """
        key = (round_no, seq)
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        topic = self.topics.device(self.device_id, DeviceChannel.ACT)
        first_sent = time.perf_counter()
        try:
            tries, excused = 0, 0
            while tries <= self.settings.grad_retries:
                if tries or excused:
                    log.warning("%s: gradient %d/%d late; re-sending (try %d)",
                                self.device_id, round_no, seq, tries + excused + 1)  # fmt: skip
                    self.events.resent()
                assert self._link is not None
                connects = self._link.connects
                self._resend_now.clear()
                sent = time.perf_counter()
                await self._publish(topic, payload)
                uplink_s = time.perf_counter() - sent
                if not await self._gradient_or_nudge(future, wait_s):
                    # A wait spoilt by a reconnect (the broker went away) is not the edge's
                    # fault: it does not use up a retry, up to a bound.
                    spoilt = connects != self._link.connects or not self._link.is_connected
                    if (spoilt or self._resend_now.is_set()) and excused < MAX_EXCUSED_RETRIES:
                        excused += 1
                    else:
                        tries += 1
                    continue
                reply = future.result()
                round_trip = time.perf_counter() - sent
                edge_s = parse_meta(GradientMeta, reply.meta).server_s
                self.events.gradient(time.perf_counter() - first_sent, edge_s)
                downlink_s = max(round_trip - uplink_s - edge_s, 0.0)
                grad_bytes = sum(t.nbytes for t in reply.tensors.values()) + sum(
                    t.nbytes for t in reply.quantized.values()
                )
                self.link.uplink.add(len(payload), uplink_s)
                self.link.downlink.add(grad_bytes, downlink_s)
                tally.round_trips.append(round_trip)
                tally.uplink_s += uplink_s
                tally.downlink_s += downlink_s
                return reply
            raise NoGradient(f"no gradient for batch {seq} after {tries + excused} tries")
        finally:
            # Only our own wait: a newer attempt of the round may wait on the same batch now.
            if self._pending.get(key) is future:
                del self._pending[key]

    async def _gradient_or_nudge(self, future: asyncio.Future[Frame], wait_s: float) -> bool:
        """Wait for the gradient; False at the timeout, or at once when a reconnect (ours or
        the edge's) may have lost the batch or its gradient."""
        if self._resend_now.is_set():
            return future.done()
        nudge = asyncio.ensure_future(self._resend_now.wait())
        either: set[asyncio.Future[Any]] = {future, nudge}
        try:
            await asyncio.wait(either, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            nudge.cancel()
        return future.done()

    async def _timed(self, tally: RoundTally, pace: Pace, work: Awaitable[T]) -> T:
        """Await the trainer's ``work``, counting its time as busy.

        An emulated board then waits out the rest of its own, slower time for the phase.
        """
        began = time.perf_counter()
        result = await work
        tally.host_s += time.perf_counter() - began
        tally.behind_s += await self.environment.board.pad(pace, began)
        tally.busy_s += time.perf_counter() - began
        return result

    @staticmethod
    def _check_grad(reply: Frame, act: WireTensor) -> WireTensor:
        grad = reply.tensor("grad")
        if grad is None or grad.shape != act.shape or wire_format(grad) != wire_format(act):
            raise RoundFailed("the edge sent a gradient of the wrong shape or dtype")
        # A quantised gradient's values are finite by construction (the codec checked them).
        if isinstance(grad, np.ndarray) and not np.isfinite(grad).all():
            raise RoundFailed("the edge sent a non-finite gradient")
        return grad

    async def _join(self, welcome: Welcome) -> None:
        """Take part in the edge's session if this device has its model; else refuse, saying
        why on both sides (the edge leaves a refused device out of its plans)."""
        self.refused = await self.trainer.check_model(welcome.model)
        if self.refused is not None:
            log.error("%s: refused edge session %s: %s", self.device_id, welcome.session,
                      self.refused)  # fmt: skip
            await self._publish_status("refused")
            return
        await self._report_profile(welcome.model, welcome.batch_size)

    async def _report_profile(self, model: ModelInfo, batch_size: int) -> None:
        """Measure every block's forward and backward time here, and tell the edge."""
        known = self._profiled
        if known is None or (known.host.model, known.host.batch_size) != (model.name, batch_size):
            measured = await self.trainer.profile(model, batch_size, urgent=True)
            board = self.environment.board
            await self._prepare_board(model)
            from splitnn.codec_profile import measure_codec_costs  # torch: only where it trains

            codec = await asyncio.to_thread(measure_codec_costs, WIRE_DTYPES)  # ~0.1 s
            host = ComputeProfile(
                model=model.name, batch_size=batch_size,
                forward_s=measured.forward_s, backward_s=measured.backward_s,
                codec_s_per_mb={f: c.encode_s_per_mb + c.decode_s_per_mb for f, c in codec.items()},
            )  # fmt: skip
            floor = None
            if board.emulates_compute:
                forward, backward = board.block_times(
                    measured.forward_s, measured.backward_s, batch_size, model.name
                )
                floor = host.model_copy(update={"forward_s": forward, "backward_s": backward})
            self._profiled = DeviceTimings(host, floor)
            self._timings = self._profiled.at(1.0)
            self._speed_ratio = None
            log.info("%s: profiled %s (%s): %.4f s forward, %.4f s backward per batch of %d",
                     self.device_id, model.name, self.settings.profile,
                     sum(self._timings.forward_s), sum(self._timings.backward_s),
                     batch_size)  # fmt: skip
        await self._publish_telemetry()

    async def _prepare_board(self, model: ModelInfo) -> None:
        """Let the board get ready to pace ``model`` (off the event loop: it may count the
        model's costs with torch)."""
        await asyncio.to_thread(self.environment.board.prepare, model)

    async def _publish_telemetry(
        self, round_no: int | None = None, tally: RoundTally | None = None
    ) -> None:
        """Everything the planner can use, measured here; the compute profile rides along."""
        battery = self.environment.battery.reading()
        board = self.environment.power_meter.reading()
        up, down = self.link.uplink, self.link.downlink
        telemetry = Telemetry(
            device_id=self.device_id,
            round=round_no,
            batches=len(tally.round_trips) if tally else 0,
            busy_s=tally.busy_s if tally else 0.0,
            speed_ratio=self._speed_ratio,
            uplink_bps=up.bps,
            downlink_bps=down.bps,
            uplink_samples=up.samples,
            downlink_samples=down.samples,
            battery_pct=battery.percent if battery else None,
            charging=battery.charging if battery else None,
            board_power_w=board.total_w if board else None,
            compute=self._timings,
        )
        topic = self.topics.device(self.device_id, DeviceChannel.TELEMETRY)
        await self._publish(topic, to_json(telemetry, self.edge_protocol))

    async def _telemetry_loop(self) -> None:
        await asyncio.sleep(self.first_telemetry_s)
        while True:
            if self._link is not None and self._link.is_connected:
                with contextlib.suppress(LinkError):
                    await self._publish_telemetry()
            await asyncio.sleep(self.settings.telemetry_interval_s)

    def _follow_drift(self, start: RoundStart, tally: RoundTally) -> None:
        """After a round: how it compared with the timings the edge planned it with, and the
        timings to plan the next one with, from how fast the host really ran (drift.py)."""
        profiled, planned = self._profiled, self._timings
        if profiled is None or planned is None or profiled.host.model != start.model.name:
            return
        batch, cut = start.train.batch_size, start.cut
        predicted = compute_time_s(planned, cut, batch, tally.batches)
        self._speed_ratio = tally.busy_s / predicted if predicted > 0 else None
        factor = profiled.host_factor(cut, batch, tally.batches, tally.host_s)
        if factor is not None:
            self._timings = profiled.at(factor)
            log.info("%s: host ran at %.2fx its profiled time in round %d (%.2fx the plan's)",
                     self.device_id, factor, start.round, self._speed_ratio or 0.0)  # fmt: skip

    # --- supervision (systemd: runtime.systemd) ---------------------------------------------------

    def health_problem(self) -> str | None:
        """None while healthy: the link's connection loop and the dispatcher live."""
        if self._link is None or not self._link.running:
            return "the MQTT connection loop has ended"
        if self._dispatcher is None or self._dispatcher.done():
            return "the message dispatcher has ended"
        return None

    def status_line(self) -> str:
        """What the agent is doing, in one line (systemd's STATUS=)."""
        if self._link is not None and not self._link.is_connected:
            return "reconnecting to the broker"
        if self._training is not None and not self._training.done():
            return f"training round {self._training_round}; {self.rounds_done} rounds done"
        if self.edge_session is None:
            return "waiting for the edge"
        return f"idle; {self.rounds_done} rounds done with edge session {self.edge_session}"

    def _cancel_training(self) -> None:
        if self._training is not None and not self._training.done():
            self._training.cancel()

    async def _stop_training(self) -> None:
        if self._training is not None:
            await cancel_and_wait(self._training)

    # --- outbound -------------------------------------------------------------------------------

    async def _announce(self) -> None:
        """On every (re)connect: say we are here, and re-send a batch in flight at once.

        Registration follows the edge's retained status: a session we have not registered with
        (on our first connect, or after the edge restarted) triggers a hello.
        """
        self._resend_now.set()
        await self._publish_status(*self._state())

    def _re_register(self) -> None:
        """After any abort: say hello again, so an edge that evicted us takes us back (a
        forged offline, a lost message) and we train the next round."""
        if self.edge_session is not None:
            self._background.spawn(self._send_hello())

    def _state(self) -> tuple[DeviceState, int | None]:
        if self.refused is not None:
            return "refused", None
        if self._training is not None and not self._training.done():
            return "training", self._training_round
        return ("idle" if self.rounds_done else "online"), None

    async def _send_hello(self) -> None:
        hello = Hello(
            device_id=self.device_id,
            instance=self.instance,
            agent_version=AGENT_VERSION,
            samples=self.trainer.samples,
            dataset=self.settings.data_source,
            input_shape=self.trainer.input_shape,
            num_classes=self.trainer.num_classes,
            labels=self.trainer.labels,
            profile=self.settings.profile,
            link_mode=self.settings.link_mode,
            wire_dtypes=WIRE_DTYPES,
            weight_wires=WEIGHT_WIRES,
            **self._declared_resources(),
        )
        await self._publish(
            self.topics.device(self.device_id, DeviceChannel.HELLO),
            to_json(hello, self.edge_protocol),
        )
        self.events.hello()

    def _declared_resources(self) -> dict[str, Any]:
        s = self.settings
        declared: dict[str, Any] = {}
        if s.power_compute_w is not None:
            declared["power"] = PowerFigures(
                compute_w=s.power_compute_w,
                transmit_w=s.power_transmit_w or 0.0,
                receive_w=s.power_receive_w or 0.0,
            )
        elif (power := self.environment.board.power()) is not None:
            declared["power"] = power
        if s.memory_mb is not None:
            declared["memory_bytes"] = int(s.memory_mb * 1e6)
        elif (memory := self.environment.board.memory_bytes) is not None:
            declared["memory_bytes"] = memory
        if s.uplink_mbps is not None:
            declared["uplink_bps"] = s.uplink_mbps * 1e6
        if s.downlink_mbps is not None:
            declared["downlink_bps"] = s.downlink_mbps * 1e6
        if s.allowed_cuts:
            declared["allowed_cuts"] = tuple(s.allowed_cuts)
        if s.site is not None:
            declared["site"] = s.site
        return declared

    async def _publish_status(
        self, state: DeviceState, round_no: int | None = None, *, nonce: str | None = None
    ) -> None:
        detail = self.refused if state == "refused" else None
        status = DeviceStatus(
            device_id=self.device_id, state=state, round=round_no, nonce=nonce, detail=detail
        )
        topic = self.topics.device(self.device_id, DeviceChannel.STATUS)
        try:
            await self._publish(topic, to_json(status, self.edge_protocol), retain=True)
        except LinkError as exc:  # informative; the will covers the one that matters (offline)
            log.warning("%s: status not published: %s", self.device_id, exc)

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        assert self._link is not None
        await self._link.publish(topic, payload, qos=1, retain=retain)
