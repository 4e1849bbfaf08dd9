"""The edge side of bench_edge_scale.py: one real EdgeService, its event-loop lag by phase.

Runs ``EdgeService.run()`` as ``ares edge`` does (uvloop, logging to stderr), with its
LoopLagMonitor probing every ``--lag-interval-s`` (10 ms rather than the service's 50 ms: finer
percentiles, still nothing to speak of in cost). Beside it, in the same loop, a collector wakes
every 100 ms and files the monitor's new samples under the phase the edge is in:
``registration`` (until every expected device has registered), ``starting`` (profiles, the
initial evaluation; a cluster's choice of coordinator, until the first round starts),
``training`` (until the last round is over: rounds and everything between them),
``finishing``; and per round. A replica (``--replica``, one process of a cluster) counts a
round over when it has it recorded (the coordinator) or holds its global model (the others).

stdout carries one line per event, ``EVENT <name> <time.monotonic()>``, so the orchestrator can
read the other processes' CPU counters at the same moments. The JSON (``--out``) also holds the
probes later than 20 ms with their wall-clock time (to line up with edge.log) and every garbage
collection's pause by generation (gc.callbacks). For diagnosis: ``--cprofile PATH`` profiles the
loop's thread while training, ``--slow-callback-ms`` turns on asyncio's slow-callback log, and
``--compute-workers`` and ``--switch-interval-ms`` change the edge's set-up. ``--data`` is
the edge's held-out set (a smaller one keeps a big model's evaluations short); the JSON also
holds the process's peak resident memory (``peak_rss_mib``, the kernel's VmHWM), its counters
(``batches``: the batch steps it served) and whether it held the coordinator role.

``--replica NAME`` (with ``--site``, ``--replica-capacity``) runs the edge as ``ares edge
--replica`` does, one replica of a cluster; its report and checkpoint are ``report-NAME.json``
and ``edge-NAME.ckpt``. ``--mqtt-config`` connects with a client config file (TLS, an account)
instead of ``--broker``'s URL.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchutil import percentile

import runtime
from edge_service import EdgeService, EdgeSettings
from edge_service.loop_lag import LoopLagMonitor
from runtime.logs import setup_logging
from transport import MqttSettings

COLLECT_EVERY_S = 0.1
THRESHOLD_S = 0.02  # the target: p99 loop lag under 20 ms


@dataclass
class Span:
    """Lag samples and CPU time of one stretch of the run."""

    began: float = field(default_factory=time.monotonic)
    cpu_began: float = field(default_factory=time.process_time)
    lags: list[float] = field(default_factory=list)
    ended: float | None = None
    cpu_s: float | None = None

    def close(self) -> None:
        self.ended = time.monotonic()
        self.cpu_s = time.process_time() - self.cpu_began

    def to_dict(self) -> dict[str, Any]:
        wall = (self.ended or time.monotonic()) - self.began
        return {
            "wall_s": wall,
            "cpu_s": self.cpu_s,
            "cpu_share": (self.cpu_s or 0.0) / wall if wall > 0 else None,
            "samples": len(self.lags),
            "p50_s": percentile(self.lags, 0.5),
            "p99_s": percentile(self.lags, 0.99),
            "max_s": max(self.lags, default=0.0),
            "over_threshold": sum(1 for lag in self.lags if lag > THRESHOLD_S),
        }


@dataclass
class Phases:
    expected_devices: int
    rounds: int
    profile_to: Path | None
    current: str = "registration"
    spans: dict[str, Span] = field(default_factory=lambda: {"registration": Span()})
    round_spans: list[Span] = field(default_factory=lambda: [Span()])
    profiler: cProfile.Profile | None = None
    seen: int = 0  # samples of the monitor filed so far
    spikes: list[tuple[float, float]] = field(default_factory=list)  # (wall clock, lag)

    def collect(self, lag: LoopLagMonitor) -> None:
        """File the monitor's samples taken since the last call under the current phase."""
        new = lag.since(self.seen)
        self.seen = lag.total_samples
        # When each probe woke, roughly: walk back from now by an interval plus its lag.
        at = time.time()
        for sample in reversed(new):
            if sample > THRESHOLD_S:
                self.spikes.append((at, sample))
            at -= lag.interval_s + sample
        self.spans[self.current].lags.extend(new)
        if self.current == "training":
            self.round_spans[-1].lags.extend(new)

    def advance(self, service: EdgeService) -> None:
        if self.current == "registration" and len(service.devices) >= self.expected_devices:
            self._enter("starting")
        if self.current == "starting" and round_in_flight(service):
            self._enter("training")
            self.round_spans = [Span()]
            if self.profile_to is not None:
                self.profiler = cProfile.Profile()
                self.profiler.enable()
        if self.current == "training":
            done = rounds_done(service)
            while len(self.round_spans) <= done:
                self.round_spans[-1].close()
                emit(f"round-{len(self.round_spans)}")
                self.round_spans.append(Span())
            if done >= self.rounds:
                self.round_spans.pop()  # the span opened after the last round
                self._enter("finishing")
                if self.profiler is not None and self.profile_to is not None:
                    self.profiler.disable()
                    self.profiler.dump_stats(self.profile_to)

    def _enter(self, phase: str) -> None:
        self.spans[self.current].close()
        self.current = phase
        self.spans[phase] = Span()
        emit(phase)


def rounds_done(service: EdgeService) -> int:
    """Rounds over as this edge sees them: those it recorded; a replica that does not hold the
    coordinator role records none, and counts the global models the coordinator published."""
    done = len(service.report.rounds)
    cluster = service.cluster
    if cluster is not None and not (cluster.coordinating or cluster.coordinated):
        done = max(done, cluster.view.model_round or 0)
    return done


def round_in_flight(service: EdgeService) -> bool:
    """Whether the first round has started: this edge serves one, or a replica's coordinator
    has ordered one (the devices' profiles, the initial evaluation and a cluster's choice of
    its coordinator come before)."""
    driver, cluster = service.driver, service.cluster
    if driver is not None and driver.current is not None:
        return True
    return rounds_done(service) > 0 or (cluster is not None and cluster.view.order is not None)


class GcTimes:
    """How long each garbage collection paused the process (gc.callbacks), by generation."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: []}  # (at, s)
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.pauses[info["generation"]].append((time.time(), time.perf_counter() - self._began))

    def to_dict(self) -> dict[str, Any]:
        return {
            str(gen): {
                "count": len(pauses),
                "total_s": sum(s for _, s in pauses),
                "max_s": max((s for _, s in pauses), default=0.0),
                "longest": sorted(pauses, key=lambda p: -p[1])[:10],
            }
            for gen, pauses in self.pauses.items()
        }


def peak_rss_mib() -> float | None:
    """This process's peak resident set so far (VmHWM), MiB; None where /proc has none."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def emit(event: str) -> None:
    print(f"EVENT {event} {time.monotonic():.6f}", flush=True)


async def collect(service: EdgeService, phases: Phases) -> None:
    while True:
        await asyncio.sleep(COLLECT_EVERY_S)
        phases.collect(service.loop_lag)
        phases.advance(service)


async def observe(service: EdgeService, phases: Phases, slow_callback_ms: float | None) -> None:
    if slow_callback_ms is not None:
        # asyncio's debug mode logs every callback that ran longer (and slows everything).
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = slow_callback_ms / 1000
    collector = asyncio.create_task(collect(service, phases))
    try:
        await service.run()
    finally:
        collector.cancel()
    phases.collect(service.loop_lag)
    phases.advance(service)  # the last round may have ended since the collector last looked
    phases.spans[phases.current].close()


def client_config(path: Path) -> MqttSettings:
    """The ``[mqtt]`` table of a client config ``ares broker init`` wrote (the edge's account)."""
    return MqttSettings(**tomllib.loads(path.read_text(encoding="utf-8"))["mqtt"])


def build_settings(args: argparse.Namespace) -> EdgeSettings:
    workdir = Path(args.workdir)
    # A replica's files are its own: two processes must not write one checkpoint.
    suffix = "" if args.replica is None else f"-{args.replica}"
    return EdgeSettings(
        mqtt=client_config(args.mqtt_config) if args.mqtt_config else MqttSettings(url=args.broker),
        model=args.model,
        dataset=args.dataset,
        data=args.data,
        rounds=args.rounds,
        min_devices=args.devices,
        registration_timeout_s=args.registration_timeout_s,
        policy=args.policy,
        split=args.split,
        batch_size=args.batch_size,
        batches_per_round=args.batches,
        batch_timeout_s=args.batch_timeout_s,
        deadline_floor_s=args.deadline_floor_s,
        profile_timeout_s=10.0,
        torch_threads=1,
        compute_workers=args.compute_workers,
        report=workdir / f"report{suffix}.json",
        checkpoint=workdir / f"edge{suffix}.ckpt",
        fresh=True,
        replica=args.replica,
        site=args.site,
        replica_capacity_bps=args.replica_capacity,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", help="the broker's URL (or --mqtt-config)")
    parser.add_argument("--mqtt-config", type=Path, help="a client config file: TLS, account")
    parser.add_argument("--replica", help="join a cluster as this replica (ares edge --replica)")
    parser.add_argument("--site", help="the replica's site")
    parser.add_argument("--replica-capacity", type=float, default=1.0, help="batches/s")
    parser.add_argument("--devices", type=int, required=True, help="devices to wait for")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=10, help="batches per round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data", type=Path, help="the held-out set (.npz), not the test split")
    parser.add_argument("--policy", default="sl")
    parser.add_argument("--split", type=int, default=1)
    parser.add_argument("--batch-timeout-s", type=float, default=5.0)
    parser.add_argument("--deadline-floor-s", type=float, default=60.0)
    parser.add_argument("--registration-timeout-s", type=float, default=300.0)
    parser.add_argument("--compute-workers", type=int, default=2, help="the edge's thread pool")
    parser.add_argument(
        "--switch-interval-ms", type=float, help="sys.setswitchinterval (Python's default: 5 ms)"
    )
    parser.add_argument("--lag-interval-s", type=float, default=0.01)
    parser.add_argument("--cprofile", type=Path, help="profile the loop's thread while training")
    parser.add_argument("--slow-callback-ms", type=float, help="asyncio debug: log slower ones")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    setup_logging("INFO", "edge")  # as `ares edge` runs by default
    service = EdgeService(build_settings(args))
    # A small window: the collector drains it every 100 ms, and the edge sorts it for its
    # report every round (a 100,000-sample window cost it ~20 ms on the loop each time).
    service.loop_lag = LoopLagMonitor(interval_s=args.lag_interval_s, window=2000)
    phases = Phases(args.devices, args.rounds, args.cprofile)
    gc_times = GcTimes()
    gc.callbacks.append(gc_times)
    emit("started")
    runtime.run(lambda: observe(service, phases, args.slow_callback_ms))
    emit("done")
    out = {
        "phases": {name: span.to_dict() for name, span in phases.spans.items()},
        "rounds": [span.to_dict() for span in phases.round_spans],
        "lag_interval_s": args.lag_interval_s,
        "monitor": service.loop_lag.stats().to_dict(),
        "spikes": sorted(phases.spikes, key=lambda spike: -spike[1])[:50],
        "gc": gc_times.to_dict(),
        "peak_rss_mib": peak_rss_mib(),
        "replica": args.replica,
        "coordinated": service.cluster is not None and service.cluster.coordinated,
        "counters": service.counters.snapshot(),
    }
    args.out.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
