"""Light emulated devices for bench_edge_scale.py: many in one process, the agent's own protocol.

A DeviceAgent loads torch and a dataset and trains for real; hundreds of them would swamp the
machine the edge is measured on. A light device is the agent's protocol session
(``device_agent.session``, which imports no torch) over its own MQTT connection, with a trainer
that computes nothing: a batch takes its "think time" (the forward and backward of a batch on an
IoT board), 40% before its activations leave and 60% after the gradient is back, as the compute
profile it reports says; the activations are zeros of the cut's shape and wire dtype, with
labels; at the round's end it uploads the weights the round start carried. Registration, the
welcome's telemetry, periodic telemetry, round start, close and abort, the batch timeout and
its re-sends, pings and finish are the agent's own.

Everything a device sees is tallied per process (the session's events) and written as JSON when
every device has finished: gradients and their round trips, re-sends (late gradients), how late
the device itself sent (its event loop's lag), the edge's rejections, round outcomes, and per
round when its first and last round start arrived and its first and last part left
(``round_marks``, time.time(): the orchestrator lines the processes and the edge's log up on
it).

Each device connects to ``--broker``'s URL, or with its own client config file
(``--mqtt-configs``: TLS to its broker, its account, as ``ares broker add-device`` writes it).

    python benchmarks/scale_devices.py --broker mqtt://127.0.0.1:PORT --first 0 --count 100 \
        --cut-shapes '[[32], [32], [10]]' --out devices-0.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from benchutil import summary

import runtime
from device_agent.host import host_environment
from device_agent.ports import HostTimings
from device_agent.session import DeviceSession, NoGradient, SessionEvents
from device_agent.settings import DeviceSettings
from edge_service.loop_lag import LoopLagMonitor
from schemas import (
    ErrorReport,
    Finish,
    ModelInfo,
    Ping,
    RoundAbort,
    RoundClose,
    RoundStart,
    Welcome,
    WireTensor,
    to_wire,
)
from transport import MqttSettings

FORWARD_SHARE = 0.4  # of a batch's think time; the rest is its backward


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
    # Per round: when its round starts arrived and its parts left, first and last over the
    # process's devices (time.time(): one clock for every process and for the edge's log).
    round_marks: dict[int, dict[str, list[float]]] = field(default_factory=dict)
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

    def mark_round(self, round_no: int, what: str) -> None:
        """``what`` ("start" or "upload") happened now for one device in ``round_no``."""
        now = time.time()
        marks = self.round_marks.setdefault(round_no, {})
        first_last = marks.get(what)
        if first_last is None:
            marks[what] = [now, now]
        else:
            first_last[0], first_last[1] = min(first_last[0], now), max(first_last[1], now)

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
            "round_marks": {str(r): marks for r, marks in sorted(self.round_marks.items())},
            "training_cpu_share": self.training_cpu_share(),
        }


class TallyEvents(SessionEvents):
    """A light device's session events, counted in the process's tally."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.round_no = 0  # of the last round start

    def hello(self) -> None:
        self.tally.hellos += 1

    def ctrl(self, message: Welcome | RoundStart | RoundClose | RoundAbort | Ping | Finish) -> None:
        if isinstance(message, RoundStart):
            self.tally.round_starts += 1
            self.tally.mark_training(first=True)
            self.round_no = message.round
            self.tally.mark_round(message.round, "start")
            self.tally.batch_timeouts_s.add(message.train.batch_timeout_s)
        elif isinstance(message, RoundClose):
            self.tally.closed += 1
        elif isinstance(message, RoundAbort):
            self.tally.aborted += 1

    def rejected(self, error: ErrorReport) -> None:
        self.tally.errors[error.reason] += 1

    def resent(self) -> None:
        self.tally.resends += 1

    def gradient(self, since_sent_s: float, server_s: float) -> None:
        self.tally.batches += 1
        self.tally.grad_at.append(time.monotonic())
        self.tally.rtt_s.append(since_sent_s)
        self.tally.server_s.append(server_s)

    def uploaded(self) -> None:
        self.tally.uploads += 1
        self.tally.mark_training(first=False)
        self.tally.mark_round(self.round_no, "upload")

    def round_failed(self, error: Exception) -> None:
        if isinstance(error, NoGradient):
            self.tally.failed_batches += 1
        else:  # counted and reported: the benchmark must not hide a bug
            self.tally.failures[f"{type(error).__name__}: {error}"[:200]] += 1


class ThinkingTrainer:
    """The session's trainer without compute: it sleeps each batch's think time (varied by
    the fleet's jitter) and sends zeros; no torch."""

    def __init__(self, fleet: FleetConfig, tally: Tally, rng: random.Random) -> None:
        self.fleet = fleet
        self.tally = tally
        self.random = rng
        self.samples = fleet.samples
        self.input_shape = fleet.input_shape
        self.num_classes = fleet.num_classes
        self.labels = None
        self.trains_whole_model = False
        self._start: RoundStart | None = None
        self._state: dict[str, np.ndarray] = {}
        self._think_s = fleet.think_s  # the batch in hand's

    async def start_round(self, start: RoundStart, state: Mapping[str, np.ndarray]) -> None:
        self._start, self._state = start, dict(state)
        self.trains_whole_model = start.cut >= len(self.fleet.cut_shapes)

    async def forward(self) -> tuple[WireTensor, np.ndarray]:
        assert self._start is not None
        self._think_s = self._think()
        due = time.monotonic() + FORWARD_SHARE * self._think_s
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        self.tally.slip_s.append(time.monotonic() - due)
        train = self._start.train
        shape = (train.batch_size, *self.fleet.cut_shapes[self._start.cut - 1])
        act = to_wire(np.zeros(shape, dtype=np.float32), train.wire_dtype)
        return act, np.zeros(train.batch_size, dtype=np.int64)

    async def backward(self, grad: WireTensor) -> None:
        await asyncio.sleep((1 - FORWARD_SHARE) * self._think_s)

    async def local_step(self) -> tuple[float, int]:
        assert self._start is not None
        await asyncio.sleep(self._think())
        return 1.0, self._start.train.batch_size

    async def state(self) -> dict[str, np.ndarray]:
        return self._state

    async def profile(
        self, model: ModelInfo, batch_size: int, *, urgent: bool = False
    ) -> HostTimings:
        """A batch's think time spread over the blocks, split as the sleeps are."""
        blocks = len(self.fleet.cut_shapes)
        return HostTimings(
            (FORWARD_SHARE * self.fleet.think_s / blocks,) * blocks,
            ((1 - FORWARD_SHARE) * self.fleet.think_s / blocks,) * blocks,
        )

    async def check_model(self, model: ModelInfo) -> str | None:
        return None  # it sends zeros of the edge's cut shapes: any model will do

    def _think(self) -> float:
        spread = self.fleet.jitter * self.fleet.think_s
        return self.fleet.think_s + self.random.uniform(-spread, spread)


def device_name(index: int) -> str:
    return f"dev-{index:04d}"


def client_config(path: Path) -> MqttSettings:
    """The ``[mqtt]`` table of a client config ``ares broker add-device`` wrote (TLS to the
    device's broker, its account)."""
    return MqttSettings(**tomllib.loads(path.read_text(encoding="utf-8"))["mqtt"])


def light_device(
    device_id: str, mqtt: MqttSettings, fleet: FleetConfig, tally: Tally, seed: int
) -> DeviceSession[ThinkingTrainer]:
    """One light device: the agent's session, its own MQTT connection, a thinking trainer."""
    settings = DeviceSettings(
        device_id=device_id, mqtt=mqtt, dataset=fleet.dataset, profile="light",
        telemetry_interval_s=fleet.telemetry_interval_s, profile_cache=False,
        exit_on_finish=True,
    )  # fmt: skip
    rng = random.Random(seed)
    session = DeviceSession(
        settings,
        ThinkingTrainer(fleet, tally, rng),
        environment=host_environment(),
        events=TallyEvents(tally),
    )
    # A fleet started at once must not report in lockstep: the first periodic telemetry is
    # spread over a second interval.
    interval = fleet.telemetry_interval_s
    session.first_telemetry_s = interval + rng.uniform(0, interval)
    return session


def fleet_mqtt(args: argparse.Namespace) -> dict[str, MqttSettings]:
    """Each device's connection: its client config (--mqtt-configs), else --broker's URL."""
    configs = json.loads(Path(args.mqtt_configs).read_text()) if args.mqtt_configs else {}
    mqtt = {}
    for i in range(args.first, args.first + args.count):
        device_id = device_name(i)
        settings = (
            client_config(Path(configs[device_id]))
            if device_id in configs
            else MqttSettings(url=args.broker)
        )
        mqtt[device_id] = settings.model_copy(update={"connect_timeout_s": 30.0})
    return mqtt


async def run_fleet(args: argparse.Namespace, mqtt: dict[str, MqttSettings]) -> dict[str, Any]:
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
    tally = Tally()
    devices = [
        light_device(device_name(i), mqtt[device_name(i)], fleet, tally,
                     seed=args.seed * 100_003 + i)
        for i in range(args.first, args.first + args.count)
    ]  # fmt: skip
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
    parser.add_argument("--broker", help="the broker's URL, for devices without a config")
    parser.add_argument(
        "--mqtt-configs",
        help="a JSON object: device id -> its client config file (its broker, TLS, account)",
    )
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
    mqtt = fleet_mqtt(args)
    result = runtime.run(lambda: run_fleet(args, mqtt))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
