"""One training round on the edge: serve every device's batches, collect its part.

Each participating device gets a ``DeviceRound``: an inbox of activation frames drained by its
own worker task, so devices progress in parallel and a device only ever waits for the server
compute (a small shared thread pool), never for another device's network traffic.
The round ends when every device has uploaded its part, dropped out, or the deadline passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from edge_service.fanout import gather_bounded
from edge_service.rejections import Counters, Rejected
from edge_service.server_session import ServerSession
from edge_service.weight_sync import StartWeights, received_weights, wire_data_bytes
from schemas import (
    PROTOCOL_VERSION,
    ActivationMeta,
    Frame,
    ProtocolVersion,
    RoundStart,
    TrainConfig,
    WeightsMeta,
)
from schemas.messages import RoundTraffic
from splitnn.models import ModelSpec, cut_shapes, num_blocks
from splitnn.partition import merge_states, split_state
from splitnn.tensors import arrays_to_state, state_to_arrays

log = logging.getLogger(__name__)

# ok: its part arrived in time and counts; straggler: closed at the deadline, its partial part
# counts (count_partial); late: closed at the deadline and excluded (no part within the grace,
# or partial parts do not count); aborted: the device gave the round up itself; dropped: it
# vanished (offline, restarted, silent, unreachable). Only ok and straggler reach FedAvg.
Outcome = Literal["ok", "straggler", "late", "aborted", "dropped"]


@dataclass(frozen=True)
class RoundContext:
    """What every round of a run shares."""

    spec: ModelSpec
    torch_device: torch.device
    max_frame_bytes: int
    executor: Executor
    counters: Counters
    publish_grad: Callable[[str, bytes], Awaitable[None]]
    # Asks a late device to stop and upload what it has (a RoundClose on its control topic).
    close_device: Callable[[str], Awaitable[None]]
    close_grace_s: float  # how long a closed device has to upload its partial part
    count_partial: bool  # whether such a partial part counts in FedAvg
    # Counts a rejected message and tells the device why: (device, exception, seq).
    reject: Callable[[str, Rejected, int | None], None]
    # The protocol version a device speaks: its gradients are framed in it.
    protocol_of: Callable[[str], ProtocolVersion] = lambda _device_id: PROTOCOL_VERSION
    grad_error_feedback: bool = False  # on quantised gradients (EdgeSettings)


@dataclass
class DeviceResult:
    """What one device contributed to a round."""

    device_id: str
    cut: int
    status: Outcome
    batches: int = 0
    samples: int = 0
    busy_s: float = 0.0
    server_s: float = 0.0
    service_s: float = 0.0  # the edge's receipt to reply for its batches: server_s and queueing
    train_loss: float | None = None
    rtt_median_s: float | None = None
    uplink_s: float = 0.0
    downlink_s: float = 0.0
    behind_s: float = 0.0
    # Measured at the edge: from sending the round start to holding the device's part.
    round_s: float | None = None
    state: dict[str, torch.Tensor] | None = None  # full model state after the round, if counted
    detail: str = ""
    # Data bytes of the device part's weights sent down with its round start (re-sends
    # included) and up with its part (None: not known, or no part came).
    weights_down_bytes: int | None = None
    weights_up_bytes: int | None = None

    @property
    def contributed(self) -> bool:
        """Whether its work reaches FedAvg."""
        return self.state is not None and self.samples > 0

    @property
    def discarded_batches(self) -> int:
        """Batch steps the edge applied (or the device reported) that FedAvg never sees."""
        return 0 if self.contributed else self.batches


@dataclass
class DeviceRound:
    device_id: str
    cut: int
    train: TrainConfig
    device_state: dict[str, torch.Tensor]  # what the device started from (keys, shapes, dtypes)
    session: ServerSession | None  # None when the whole model runs on the device
    # (meta, frame, perf_counter() at arrival)
    inbox: asyncio.Queue[tuple[ActivationMeta, Frame, float]] = field(default_factory=asyncio.Queue)
    result: asyncio.Future[DeviceResult] = field(default_factory=asyncio.Future)
    closing: bool = False  # the deadline passed; a partial upload is still welcome
    started: float | None = None  # perf_counter() when its round start was sent
    start: RoundStart | None = None  # that round start (re-sent after a broker restart)
    weights: StartWeights | None = None  # its weights as they travel (None: whole, as held)


Parts = dict[str, tuple[dict[str, torch.Tensor], ServerSession | None]]


def prepare_parts(
    ctx: RoundContext,
    round_no: int,
    global_state: dict[str, torch.Tensor],
    plan: dict[str, tuple[int, TrainConfig]],
    attempt: int = 0,
) -> Parts:
    """Per device: its part of the global state and its server session (None: no cut).

    Only torch work and no asyncio objects, so the service runs it in a worker thread: at
    about 1 ms a device, building 500 sessions on the event loop stalled it for 0.5 s.
    """
    parts: Parts = {}
    blocks = num_blocks(ctx.spec)
    for device_id, (cut, train) in plan.items():
        device_state, server_state = split_state(global_state, ctx.spec, cut)
        session = None
        if cut < blocks:
            session = ServerSession(
                device_id=device_id,
                round_no=round_no,
                spec=ctx.spec,
                cut=cut,
                server_state=server_state,
                train=train,
                act_shape=tuple(cut_shapes(ctx.spec)[cut - 1]),
                torch_device=ctx.torch_device,
                max_frame_bytes=ctx.max_frame_bytes,
                protocol=ctx.protocol_of(device_id),
                error_feedback=ctx.grad_error_feedback,
                attempt=attempt,
            )
        parts[device_id] = (device_state, session)
    return parts


class RoundRunner:
    """Serves one round; the service routes this round's messages to it."""

    def __init__(
        self,
        ctx: RoundContext,
        round_no: int,
        global_state: dict[str, torch.Tensor],
        plan: dict[str, tuple[int, TrainConfig]],  # device id -> (cut, training config)
        parts: Parts | None = None,  # prepare_parts(...) done beforehand (off the loop)
        *,
        attempt: int = 0,
    ) -> None:
        """``attempt``: which start of round ``round_no`` this is (a round repeated for the
        devices of an edge replica that died); traffic of any other attempt is stale."""
        self.ctx = ctx
        self.round_no = round_no
        self.attempt = attempt
        if parts is None:
            parts = prepare_parts(ctx, round_no, global_state, plan, attempt)
        self.devices: dict[str, DeviceRound] = {
            device_id: DeviceRound(device_id, cut, train, *parts[device_id])
            for device_id, (cut, train) in plan.items()
        }

    async def run(self, timeout_s: float) -> list[DeviceResult]:
        """Serve until every device finished or dropped, or ``timeout_s`` passed."""
        async with asyncio.TaskGroup() as tasks:
            workers = [
                tasks.create_task(self._serve(d), name=f"serve-{d.device_id}")
                for d in self.devices.values()
                if d.session is not None
            ]
            futures = [d.result for d in self.devices.values()]
            if futures:
                await asyncio.wait(futures, timeout=timeout_s)
            await self._close_late_devices()
            for device in self.devices.values():
                self._finish(device, "late", f"no part within {timeout_s:.1f} s and the grace")
            for worker in workers:
                worker.cancel()
        return [d.result.result() for d in self.devices.values()]

    async def _close_late_devices(self) -> None:
        """At the deadline, late devices that did some work may upload their part as it is."""
        late = [d for d in self.devices.values() if not d.result.done()]
        if not late:
            return
        for device in late:
            device.closing = True
        await gather_bounded(
            (self.ctx.close_device(d.device_id) for d in late), return_exceptions=True
        )
        await asyncio.wait([d.result for d in late], timeout=self.ctx.close_grace_s)

    def is_stale(self, meta: RoundTraffic) -> bool:
        """Traffic of another round, or of another attempt of this one: never applied."""
        return (meta.round, meta.attempt) != (self.round_no, self.attempt)

    def deliver_activation(self, device_id: str, meta: ActivationMeta, frame: Frame) -> None:
        if self._dropped_stale(meta):
            return
        device = self._running(device_id)
        if device.session is None:
            raise Rejected("bad_cut", "this device trains the whole model; no activations")
        device.inbox.put_nowait((meta, frame, time.perf_counter()))

    def deliver_weights(self, device_id: str, meta: WeightsMeta, frame: Frame) -> None:
        """Validate a device's uploaded part and complete its round."""
        if self._dropped_stale(meta):
            return
        device = self._running(device_id)
        if meta.cut != device.cut:
            raise Rejected("bad_cut", f"weights for cut {meta.cut}, expected {device.cut}")
        # Deltas added to the round's start as the device holds it: fresh arrays.
        start = device.weights.held if device.weights else state_to_arrays(device.device_state)
        received = received_weights(meta, frame, start)
        if set(received) != set(device.device_state):
            missing = sorted(set(device.device_state) - set(received))[:3]
            extra = sorted(set(received) - set(device.device_state))[:3]
            raise Rejected("bad_tensors", f"weights keys differ: missing {missing}, extra {extra}")
        for name, reference in device.device_state.items():
            array = received[name]
            if (
                array.shape != tuple(reference.shape)
                or str(reference.dtype) != f"torch.{array.dtype}"
            ):
                raise Rejected(
                    "bad_shape",
                    f"{name}: {array.dtype}{list(array.shape)}, expected "
                    f"{reference.dtype}{list(reference.shape)}",
                )
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise Rejected("not_finite", f"{name} contains NaN or Inf")
        # A closed device's part is partial: it counts by the samples it processed, if at all.
        status: Outcome = "ok"
        if device.closing:
            status = "straggler" if self.ctx.count_partial else "late"
        result = DeviceResult(
            device_id,
            device.cut,
            status,
            busy_s=meta.busy_s,
            rtt_median_s=meta.rtt_median_s,
            uplink_s=meta.uplink_s,
            downlink_s=meta.downlink_s,
            behind_s=meta.behind_s,
            round_s=None if device.started is None else time.perf_counter() - device.started,
            weights_down_bytes=device.weights.sent_bytes if device.weights else None,
            weights_up_bytes=wire_data_bytes(frame),
        )
        counted = status != "late"
        state = arrays_to_state(received) if counted else {}  # fresh arrays: no copy needed
        if device.session is None:
            result.batches, result.samples, result.train_loss = (
                meta.batches,
                meta.samples,
                meta.loss,
            )
            result.state = state if counted else None
        else:
            stats = device.session.stats
            if stats.batches != meta.batches:
                # The edge's own count is the truth about which steps were applied.
                self.ctx.counters.add("batch_count_mismatch")
            result.batches, result.samples = stats.batches, stats.samples
            result.server_s, result.service_s = stats.server_s, stats.service_s
            result.train_loss = stats.loss_sum / stats.samples if stats.samples else None
            if counted:
                result.state = merge_states(self.ctx.spec, state, device.session.state())
        device.result.set_result(result)

    def drop(self, device_id: str, detail: str, status: Outcome = "dropped") -> None:
        """The device vanished, restarted or gave up: it leaves the round now, not at the
        deadline."""
        device = self.devices.get(device_id)
        if device is not None:
            self._finish(device, status, detail)

    def _dropped_stale(self, meta: RoundTraffic) -> bool:
        """Stale traffic is counted and dropped, not refused: its sender did nothing wrong
        (the inbox filters it before it gets here; this keeps the runner safe without it)."""
        if not self.is_stale(meta):
            return False
        self.ctx.counters.add("stale_messages")
        return True

    def _running(self, device_id: str) -> DeviceRound:
        device = self.devices.get(device_id)
        if device is None:
            raise Rejected("not_in_round", f"device is not part of round {self.round_no}")
        if device.result.done():
            raise Rejected("round_closed", f"device already left round {self.round_no}")
        return device

    def _finish(self, device: DeviceRound, status: Outcome, detail: str) -> None:
        if device.result.done():
            return
        result = DeviceResult(device.device_id, device.cut, status, detail=detail)
        if device.weights is not None:
            result.weights_down_bytes = device.weights.sent_bytes
        if device.session is not None:
            stats = device.session.stats
            result.batches, result.samples, result.server_s = (
                stats.batches,
                stats.samples,
                stats.server_s,
            )
        device.result.set_result(result)
        log.warning("round %d: %s is %s (%s)", self.round_no, device.device_id, status, detail)

    async def _serve(self, device: DeviceRound) -> None:
        """Answer this device's activation batches in order, exactly once each."""
        session = device.session
        assert session is not None
        loop = asyncio.get_running_loop()
        # A live device sends at least every batch timeout (it re-sends late batches): longer
        # silence means it is gone even if its will has not arrived (e.g. a dead link).
        silence_s = max(10.0, 3 * device.train.batch_timeout_s)
        while not device.result.done():
            try:
                async with asyncio.timeout(silence_s):
                    meta, frame, received = await device.inbox.get()
            except TimeoutError:
                self._finish(device, "dropped", f"silent for {silence_s:.0f} s")
                return
            if meta.seq < session.next_seq:
                # A repeat (lost gradient or QoS 1 redelivery): never apply twice.
                self.ctx.counters.add("duplicate_batches")
                if meta.seq == session.next_seq - 1 and session.last_reply is not None:
                    await self.ctx.publish_grad(device.device_id, session.last_reply)
                continue
            try:
                if meta.seq > session.next_seq:
                    raise Rejected("bad_seq", f"batch {meta.seq}, expected {session.next_seq}")
                if meta.seq >= device.train.batches:
                    raise Rejected("too_many_batches", f"round has {device.train.batches} batches")
                act, labels = session.check_activation(frame)
            except Rejected as exc:
                self.ctx.reject(device.device_id, exc, meta.seq)
                continue
            try:
                reply = await loop.run_in_executor(
                    self.ctx.executor, session.step, meta.seq, act, labels, received
                )
            except Exception as exc:  # a failed step must not take the other devices down
                log.exception("%s: server step %d failed", device.device_id, meta.seq)
                self._finish(device, "dropped", f"server step failed: {exc}")
                return
            session.next_seq += 1
            session.last_reply = reply
            self.ctx.counters.add("batches")
            await self.ctx.publish_grad(device.device_id, reply)
