"""Light emulated devices for bench_edge_scale.py: many in one process, the real wire protocol.

A DeviceAgent loads torch and a dataset and trains for real; hundreds of them would swamp the
machine the edge is measured on. A light device speaks the same protocol (schemas.topics,
schemas.messages, schemas.codec) over its own MQTT connection, and replaces the compute with a
sleep ("think time": the forward and backward of a batch on an IoT board):

* on the edge's retained status with a new session: ``hello``; on ``welcome``: telemetry with a
  compute profile consistent with the think time (the planner uses it); telemetry again every
  ``telemetry_interval_s`` and at every round end, as the agent does;
* on ``round_start``: status ``training``; per batch: think, publish the activations at the
  plan's cut (random, finite, the right shape and dtype) with labels, wait for the gradient
  with the round's batch timeout and re-send if it is late (as the agent does), check its shape;
  then upload the device part's weights (those the round start carried: right keys, shapes,
  dtypes) and report ``idle``; ``round_close`` stops after the batch in hand; ``round_abort``
  drops the round; ``finish`` ends the device.

Everything a device sees is tallied per process and written as JSON when every device has
finished: gradients and their round trips, re-sends (late gradients), how late the device
itself sent (its event loop's lag), the edge's rejections, round outcomes.

    python benchmarks/scale_devices.py --broker mqtt://127.0.0.1:PORT --first 0 --count 100 \
        --cut-shapes '[[32], [32], [10]]' --out devices-0.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from benchutil import summary

import runtime
from edge_service.loop_lag import LoopLagMonitor
from schemas import (
    ActivationMeta,
    ComputeProfile,
    DeviceChannel,
    DeviceStatus,
    EdgeStatus,
    ErrorReport,
    Finish,
    Frame,
    GradientMeta,
    Hello,
    Ping,
    RoundAbort,
    RoundClose,
    RoundStart,
    Telemetry,
    Topics,
    WeightsMeta,
    Welcome,
    decode_frame,
    encode_frame,
    parse_ctrl,
    parse_json,
    parse_meta,
    to_json,
    to_meta,
)
from schemas.messages import DeviceState
from transport import LastWill, LinkError, Message, MqttLink, MqttSettings
from transport.tasks import BackgroundTasks, cancel_and_wait

log = logging.getLogger(__name__)

GRAD_RETRIES = 3  # the agent's default, kept here: importing device_agent would load torch
STOP_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class FleetConfig:
    """What every light device of a process shares."""

    think_s: float  # per batch: forward and backward on the emulated board
    jitter: float  # think times vary uniformly by +- this fraction
    dataset: str
    input_shape: tuple[int, ...]
    num_classes: int
    cut_shapes: tuple[tuple[int, ...], ...]  # per-sample activation shape after each block
    samples: int
    telemetry_interval_s: float


@dataclass
class Tally:
    """What all devices of this process saw (single-threaded asyncio: no locks needed)."""

    hellos: int = 0
    round_starts: int = 0
    batches: int = 0  # gradients received
    resends: int = 0  # the gradient was late (batch timeout): the batch was sent again
    failed_batches: int = 0  # no gradient after every retry: the round failed on the device
    uploads: int = 0
    closed: int = 0  # round_close received (the edge's round deadline passed)
    aborted: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # the edge's rejections, by reason
    failures: Counter[str] = field(default_factory=Counter)  # rounds this side failed, by error
    rtt_s: list[float] = field(default_factory=list)  # first send -> gradient in hand
    server_s: list[float] = field(default_factory=list)  # the edge's receipt -> reply
    slip_s: list[float] = field(default_factory=list)  # how late a batch left after its think
    grad_at: list[float] = field(default_factory=list)  # time.monotonic() of each gradient
    batch_timeouts_s: set[float] = field(default_factory=set)
    # This process's CPU (time.process_time()) from the first round start to the last upload.
    training: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, cpu)

    def mark_training(self, *, first: bool) -> None:
        """At a round start (first=True keeps only the earliest) or an upload (the latest)."""
        now = (time.monotonic(), time.process_time())
        if first:
            if not self.training:
                self.training.append(now)
        elif self.training:
            self.training[1:] = [now]

    def training_cpu_share(self) -> float | None:
        if len(self.training) < 2 or self.training[1][0] <= self.training[0][0]:
            return None
        (t0, c0), (t1, c1) = self.training
        return (c1 - c0) / (t1 - t0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hellos": self.hellos,
            "round_starts": self.round_starts,
            "batches": self.batches,
            "resends": self.resends,
            "failed_batches": self.failed_batches,
            "uploads": self.uploads,
            "closed": self.closed,
            "aborted": self.aborted,
            "errors": dict(self.errors),
            "failures": dict(self.failures),
            "rtt_s": self.rtt_s,
            "server_s": self.server_s,
            "slip_s": self.slip_s,
            "grad_at": self.grad_at,
            "batch_timeouts_s": sorted(self.batch_timeouts_s),
            "training_cpu_share": self.training_cpu_share(),
        }


class LightDevice:
    """One emulated device: its own MQTT connection, no torch."""

    def __init__(
        self, device_id: str, mqtt: MqttSettings, fleet: FleetConfig, tally: Tally, seed: int
    ) -> None:
        self.device_id = device_id
        self.mqtt = mqtt
        self.fleet = fleet
        self.tally = tally
        self.topics = Topics(mqtt.prefix)
        self.instance = uuid.uuid4().hex[:12]
        self.random = random.Random(seed)
        self.numpy_rng = np.random.default_rng(seed)
        self.finished = asyncio.Event()
        self.edge_session: str | None = None
        self._link: MqttLink | None = None
        self._training: asyncio.Task[None] | None = None
        self._closing_round: int | None = None
        self._pending: dict[tuple[int, int], asyncio.Future[Frame]] = {}
        self._background = BackgroundTasks()

    async def run(self) -> None:
        channels = (DeviceChannel.CTRL, DeviceChannel.GRAD, DeviceChannel.ERROR)
        subscriptions = [(self.topics.device(self.device_id, ch), 1) for ch in channels]
        subscriptions.append((self.topics.edge_status, 1))
        will = LastWill(
            self.topics.device(self.device_id, DeviceChannel.STATUS),
            to_json(DeviceStatus(device_id=self.device_id, state="offline")),
        )
        link = MqttLink(
            self.mqtt, f"light-{self.device_id}", subscriptions, will=will,
            on_connect=lambda: self._status("online"),
        )  # fmt: skip
        self._link = link
        async with link, asyncio.TaskGroup() as tasks:
            dispatcher = tasks.create_task(self._dispatch(link))
            telemetry = tasks.create_task(self._telemetry_loop())
            await self.finished.wait()
            if self._training is not None:
                await cancel_and_wait(self._training)
            dispatcher.cancel()
            telemetry.cancel()
            await self._background.drain(STOP_TIMEOUT_S)
            with contextlib.suppress(LinkError, TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await self._status("offline")

    # --- inbound --------------------------------------------------------------------------------

    async def _dispatch(self, link: MqttLink) -> None:
        async for message in link.messages():
            self._handle(message)

    def _handle(self, message: Message) -> None:
        if not message.payload:
            return
        if message.topic == self.topics.edge_status:
            status = parse_json(EdgeStatus, message.payload)
            if status.state != "stopped" and status.session != self.edge_session:
                self.edge_session = status.session
                self._background.spawn(self._hello())
            return
        parsed = self.topics.parse_device_topic(message.topic)
        if parsed is None:
            return
        channel = parsed[1]
        if channel is DeviceChannel.ERROR:
            self.tally.errors[parse_json(ErrorReport, message.payload).reason] += 1
            return
        frame = decode_frame(message.payload, max_bytes=self.mqtt.max_payload_bytes)
        if channel is DeviceChannel.GRAD:
            grad = parse_meta(GradientMeta, frame.meta)
            future = self._pending.get((grad.round, grad.seq))
            if future is not None and not future.done():
                future.set_result(frame)
        elif channel is DeviceChannel.CTRL:
            self._on_ctrl(parse_ctrl(frame.meta), frame)

    def _on_ctrl(
        self,
        message: Welcome | RoundStart | RoundClose | RoundAbort | Ping | Finish,
        frame: Frame,
    ) -> None:
        if isinstance(message, Welcome):
            self.edge_session = message.session
            self._background.spawn(self._telemetry(profile=message))
        elif isinstance(message, Ping):  # the edge checks an offline status: we are here
            training = self._training is not None and not self._training.done()
            self._background.spawn(
                self._status("training" if training else "idle", nonce=message.nonce)
            )
        elif isinstance(message, RoundStart):
            self._cancel_training()
            self.tally.round_starts += 1
            self.tally.mark_training(first=True)
            self._training = asyncio.create_task(self._train(message, dict(frame.tensors)))
        elif isinstance(message, RoundClose):
            self._closing_round = message.round
            self.tally.closed += 1
        elif isinstance(message, RoundAbort):
            self.tally.aborted += 1
            self._cancel_training()
        else:
            self._cancel_training()
            self.finished.set()

    def _cancel_training(self) -> None:
        if self._training is not None and not self._training.done():
            self._training.cancel()

    # --- a round --------------------------------------------------------------------------------

    async def _train(self, start: RoundStart, state: dict[str, np.ndarray]) -> None:
        try:
            await self._train_round(start, state)
        except Exception as exc:  # counted and reported: the benchmark must not hide a bug
            self.tally.failures[f"{type(exc).__name__}: {exc}"[:200]] += 1
            log.exception("%s: round %d failed", self.device_id, start.round)
            with contextlib.suppress(LinkError):
                await self._status("aborted", start.round)

    async def _train_round(self, start: RoundStart, state: dict[str, np.ndarray]) -> None:
        train, blocks = start.train, len(self.fleet.cut_shapes)
        self.tally.batch_timeouts_s.add(train.batch_timeout_s)
        await self._status("training", start.round)
        batches, rtts, losses = 0, [], []
        for seq in range(train.batches):
            if self._closing_round == start.round:
                break
            due = time.monotonic() + self._think()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if start.cut < blocks:
                self.tally.slip_s.append(time.monotonic() - due)
                reply = await self._exchange(start, seq, due)
                if reply is None:
                    await self._status("aborted", start.round)
                    return
                meta = parse_meta(GradientMeta, reply.meta)
                rtts.append(time.monotonic() - due)
                losses.append(meta.loss)
            batches += 1
        weights = WeightsMeta(
            device_id=self.device_id, round=start.round, cut=start.cut,
            samples=batches * train.batch_size, batches=batches,
            busy_s=batches * self.fleet.think_s,
            loss=statistics.fmean(losses) if losses else 1.0,
            rtt_median_s=statistics.median(rtts) if rtts else None,
        )  # fmt: skip
        payload = encode_frame(to_meta(weights), state, max_bytes=self.mqtt.max_payload_bytes)
        await self._publish(self.topics.device(self.device_id, DeviceChannel.WEIGHTS), payload)
        self.tally.uploads += 1
        self.tally.mark_training(first=False)
        await self._status("idle", start.round)
        await self._telemetry(round_no=start.round, batches=batches)

    def _think(self) -> float:
        spread = self.fleet.jitter * self.fleet.think_s
        return self.fleet.think_s + self.random.uniform(-spread, spread)

    async def _exchange(self, start: RoundStart, seq: int, due: float) -> Frame | None:
        """Publish the batch, wait for its gradient, re-send when late; None: gave up."""
        shape = self.fleet.cut_shapes[start.cut - 1]
        batch = start.train.batch_size
        act = self.numpy_rng.standard_normal((batch, *shape), dtype=np.float32)
        labels = self.numpy_rng.integers(0, self.fleet.num_classes, size=batch, dtype=np.int64)
        act = act.astype(np.dtype(start.train.wire_dtype))
        meta = ActivationMeta(device_id=self.device_id, round=start.round, seq=seq)
        payload = encode_frame(to_meta(meta), {"act": act, "labels": labels})
        key = (start.round, seq)
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        topic = self.topics.device(self.device_id, DeviceChannel.ACT)
        try:
            for attempt in range(GRAD_RETRIES + 1):
                if attempt:
                    self.tally.resends += 1
                await self._publish(topic, payload)
                try:
                    async with asyncio.timeout(start.train.batch_timeout_s):
                        reply = await asyncio.shield(future)
                except TimeoutError:
                    continue
                grad = reply.tensors.get("grad")
                if grad is None or grad.shape != act.shape:
                    raise RuntimeError(f"{self.device_id}: gradient of the wrong shape")
                self.tally.batches += 1
                self.tally.grad_at.append(time.monotonic())
                self.tally.rtt_s.append(time.monotonic() - due)
                self.tally.server_s.append(parse_meta(GradientMeta, reply.meta).server_s)
                return reply
            self.tally.failed_batches += 1
            return None
        finally:
            self._pending.pop(key, None)

    # --- outbound -------------------------------------------------------------------------------

    async def _hello(self) -> None:
        self.tally.hellos += 1
        hello = Hello(
            device_id=self.device_id, instance=self.instance, agent_version="light-0",
            samples=self.fleet.samples, dataset=self.fleet.dataset,
            input_shape=self.fleet.input_shape,
            num_classes=self.fleet.num_classes, profile="light",
        )  # fmt: skip
        await self._publish(self.topics.device(self.device_id, DeviceChannel.HELLO), to_json(hello))

    async def _telemetry(
        self, *, profile: Welcome | None = None, round_no: int | None = None, batches: int = 0
    ) -> None:
        compute = None
        if profile is not None:
            # A batch's think time spread over the blocks: 40% forward, 60% backward.
            blocks = len(self.fleet.cut_shapes)
            compute = ComputeProfile(
                model=profile.model.name, batch_size=profile.batch_size,
                forward_s=(0.4 * self.fleet.think_s / blocks,) * blocks,
                backward_s=(0.6 * self.fleet.think_s / blocks,) * blocks,
            )  # fmt: skip
        telemetry = Telemetry(
            device_id=self.device_id, round=round_no, batches=batches,
            busy_s=batches * self.fleet.think_s, compute=compute,
        )  # fmt: skip
        topic = self.topics.device(self.device_id, DeviceChannel.TELEMETRY)
        await self._publish(topic, to_json(telemetry))

    async def _telemetry_loop(self) -> None:
        # As the agent: the first after one interval (registered by then); spread over a second
        # interval, since a fleet started at once must not report in lockstep.
        interval = self.fleet.telemetry_interval_s
        await asyncio.sleep(interval + self.random.uniform(0, interval))
        while True:
            if self._link is not None and self._link.is_connected:
                with contextlib.suppress(LinkError):
                    await self._telemetry()
            await asyncio.sleep(interval)

    async def _status(
        self, state: DeviceState, round_no: int | None = None, *, nonce: str | None = None
    ) -> None:
        status = DeviceStatus(device_id=self.device_id, state=state, round=round_no, nonce=nonce)
        topic = self.topics.device(self.device_id, DeviceChannel.STATUS)
        await self._publish(topic, to_json(status), retain=True)

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        assert self._link is not None
        await self._link.publish(topic, payload, qos=1, retain=retain)


async def run_fleet(args: argparse.Namespace) -> dict[str, Any]:
    """Run the devices until each was told training is over (or ``max_s``); the tally."""
    fleet = FleetConfig(
        think_s=args.think_s,
        jitter=args.jitter,
        dataset=args.dataset,
        input_shape=tuple(json.loads(args.input_shape)),
        num_classes=args.classes,
        cut_shapes=tuple(tuple(shape) for shape in json.loads(args.cut_shapes)),
        samples=args.samples,
        telemetry_interval_s=args.telemetry_interval_s,
    )
    mqtt = MqttSettings(url=args.broker, connect_timeout_s=30.0)
    tally = Tally()
    devices = [
        LightDevice(f"dev-{i:04d}", mqtt, fleet, tally, seed=args.seed * 100_003 + i)
        for i in range(args.first, args.first + args.count)
    ]
    cpu_before = time.process_time()
    started = time.monotonic()
    async with LoopLagMonitor(interval_s=0.01, window=100_000) as lag:
        try:
            async with asyncio.timeout(args.max_s), asyncio.TaskGroup() as tasks:
                for device in devices:
                    tasks.create_task(device.run())
            finished = True
        except TimeoutError:
            finished = False
    return {
        "first": args.first,
        "count": args.count,
        "finished": finished,
        "wall_s": time.monotonic() - started,
        "cpu_s": time.process_time() - cpu_before,
        "loop_lag": lag.stats().to_dict(),
        "slip": summary(tally.slip_s),
        **tally.to_dict(),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first device id")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--think-s", type=float, default=1.0)
    parser.add_argument("--jitter", type=float, default=0.2)
    parser.add_argument("--dataset", default="digits", help="what hello declares")
    parser.add_argument("--input-shape", default="[1, 8, 8]", help="JSON list")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--cut-shapes", required=True, help="JSON list of per-sample shapes")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--telemetry-interval-s", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-s", type=float, default=1800.0, help="give up after this long")
    parser.add_argument("--out", required=True)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    result = runtime.run(lambda: run_fleet(args))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
