"""Edge scale benchmark: one real edge service against 100, 200 and 500 light emulated devices.

Per device count, on a private Mosquitto: the edge (benchmarks/scale_edge.py: EdgeService as
``ares edge`` runs it, in its own process, its loop lag filed by phase) and the light devices
(benchmarks/scale_devices.py: the agent's protocol session, many MQTT clients per process, no
torch work, a think time per batch standing in for the board's compute) train ``--rounds`` rounds of
``--batches`` batches of the ``tiny`` model at cut ``--split``. Measured:

* batches per second served by the edge over the training phase (the first round started ->
  the last round recorded, round boundaries included; the devices' profiles and the initial
  evaluation before it are left out), against the offered load (devices / think time);
* the edge's event-loop lag (p50, p99, max; probes later than 20 ms) while training, and
  while the devices registered;
* deadline misses caused by the edge (the devices are light and never late themselves; their
  own send slip is reported to show it): *late gradients*, batches whose gradient was not back
  within the round's batch timeout so that the device re-sent the batch; *failed batches*,
  batches still without a gradient after every re-send; *stragglers / dropped*, device-rounds
  the edge itself marked so; and the edge's *rejections* (errors sent to a device);
* round trips as the devices saw them, the edge's own receipt-to-reply time (``server_s``);
* CPU share (of one core) of the edge, Mosquitto (single-threaded) and the device processes.

Per model (``--models vgg5,mobilenetv2,resnet18``): the same run for each model at cut
``--split`` (``--dataset synthetic`` for the CIFAR-shaped ones), and a summary of the edge's
serving rate: batches per second over the rounds' serving windows (each round from its start to
the last device's part held, so the edge's aggregation and evaluation between rounds are left
out), the edge's server step per batch and how many of its compute workers that kept busy, its
peak memory. To measure the edge's capacity rather than the devices' pace, offer more than it
serves (devices / think time above the served rate) and give a batch timeout above the round
trips a queue of that many devices makes (devices / served rate), so no batch is sent twice.
``--eval-samples`` shrinks the edge's held-out set (default with ``--models``: 200), which
keeps a big model's evaluations between rounds short.

Replica mode (``--replicas 1,2``): the same load served by one plain edge (``1``) and by N
replicas r1..rN of one cluster on the same broker (``N``; ``1r``: a cluster of one replica,
which isolates the cluster's protocol from the split of the work). Per run: batches per second
over the rounds (round 1's first start to the last round's last part, as the devices saw them)
and over the serving windows (the coordinator's report), against offered; per edge process its
batches served, its p99 loop lag and CPU share; Mosquitto's and the devices' CPU and the
machine's busy cores; and the time between rounds as the devices saw it (a round's last part
sent to the next round's first start: all the edge or the cluster does between two rounds),
split at the next round's plan in the (coordinator's) log, beside each round's ``duration_s``
less its slowest device's ``round_s``. Against the plain edge's row: the scale-out factor and
the extra time between rounds.

Site mode (``--sites``): the same run with the devices over TLS with their own accounts (as
``ares broker add-device`` provisions them) at the core broker, then at a site broker bridged
to the core (``testbed.sites.LocalSites``): round trips, the devices' window per round, the time
between rounds; the bridge's extra time per round.

    python benchmarks/bench_edge_scale.py [--devices 100,200,500] [--quick] [--json OUT]
    python benchmarks/bench_edge_scale.py --replicas 1,2 --model vgg5 --dataset synthetic \
        --split 2 --devices 10,20,40 --think-s 0.2 --batch-timeout-s 60 --rounds 4 \
        --compute-workers 1 --eval-samples 200 --per-process 20 [--json OUT]
    python benchmarks/bench_edge_scale.py --sites --devices 20 --think-s 0.1 --rounds 6 [--json OUT]
    python benchmarks/bench_edge_scale.py --models vgg5,mobilenetv2,resnet18 --dataset synthetic \
        --split 1 --devices 20 --think-s 0.2 --batch-size 20 --batch-timeout-s 60 --rounds 2 \
        --batches 5 [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from benchutil import (
    cpu_seconds,
    machine_info,
    print_machine,
    print_table,
    raise_open_files_limit,
    summary,
    write_json,
)
from numpy.typing import NDArray
from scale_devices import device_name

from broker import BrokerConfig, LocalBroker
from planner.policies import POLICIES
from splitnn.datasets import load_dataset
from splitnn.models import ModelSpec, build_model, cut_shapes, num_blocks
from testbed.sites import LocalSites

HERE = Path(__file__).parent
TARGET_DEVICES = 200
TARGET_P99_S = 0.020
START_TIMEOUT_S = 300.0  # the edge imports torch, loads data, profiles itself
MODELS_EVAL_SAMPLES = 200  # the edge's held-out set per model run, unless --eval-samples
SITE = "hall"  # the site broker's name with --sites


@dataclass(frozen=True)
class EdgeSet:
    """The edge processes of one run: one plain edge (``ares edge``), or ``count`` replicas
    r1, r2, ... of one cluster (``ares edge --replica rN``); ``cluster`` with a count of 1 is a
    cluster of one replica (the coordinator serves every device and merges its own share)."""

    count: int = 1
    cluster: bool = False

    @classmethod
    def parse(cls, token: str) -> EdgeSet:
        """``1``: the plain edge; ``N`` > 1: N replicas; ``1r``: a cluster of one replica."""
        one_replica = token.endswith("r")
        count = int(token.removesuffix("r"))
        if count < 1:
            raise ValueError(f"{token!r}: at least one edge")
        return cls(count, cluster=one_replica or count > 1)

    @property
    def names(self) -> list[str | None]:
        """The replicas' names (None: the plain edge)."""
        return [f"r{i + 1}" for i in range(self.count)] if self.cluster else [None]

    @property
    def label(self) -> str:
        if not self.cluster:
            return "1 edge"
        return f"{self.count} replica" + ("s" if self.count > 1 else "")

    @property
    def slug(self) -> str:
        return "edge" if not self.cluster else f"replicas-{self.count}"


NETWORKS = ("local", "core", "site")


@dataclass(frozen=True)
class Config:
    devices: tuple[int, ...]
    rounds: int
    batches: int
    batch_size: int
    think_s: float
    jitter: float
    split: int
    model: str
    dataset: str
    policy: str
    batch_timeout_s: float
    per_process: int
    cprofile: bool
    compute_workers: int
    switch_interval_ms: float | None
    eval_samples: int | None = None  # the edge's held-out set: this many test samples; None: all
    models: tuple[str, ...] = ()  # per-model mode: one run per model (``model`` is the current)
    edges: EdgeSet = EdgeSet()  # the current run's edge processes
    edge_sets: tuple[EdgeSet, ...] = ()  # replica mode (--replicas): one run per set
    # Where the devices connect: "local", one plain Mosquitto; "core", over TLS with their own
    # accounts to the core broker; "site", likewise to a site broker bridged to the core.
    network: str = "local"
    networks: tuple[str, ...] = ()  # site mode (--sites): one run per network


@dataclass
class CpuMark:
    """CPU seconds of Mosquitto and of the whole machine at one moment. (The edge and the
    device processes, which exit at the end, measure their own.)"""

    at: float
    broker: float  # every broker's (the core's and the site's, with --sites)
    machine_busy: float  # all cores, seconds


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def mark(brokers: Sequence[int]) -> CpuMark:
    return CpuMark(
        at=time.monotonic(),
        broker=sum(cpu_seconds(pid) for pid in brokers),
        machine_busy=machine_cpu()[0],
    )


@dataclass
class Network:
    """Where the run's clients connect: the edges' and the device processes' arguments, and the
    broker processes (their CPU is measured)."""

    edge_args: list[str]  # --broker URL, or --mqtt-config FILE
    fleet_args: list[str]  # --broker URL, or --mqtt-configs FILE
    broker_pids: list[int]


@dataclass
class EdgeProcess:
    """One edge process and the events it printed (``EVENT name time``)."""

    name: str | None  # its replica name; None: the plain edge
    process: asyncio.subprocess.Process
    events: dict[str, float] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        """Its files' suffix (scale_edge.py writes report-r1.json for replica r1)."""
        return "" if self.name is None else f"-{self.name}"


class Run:
    """One device count: broker(s), edge(s), device processes; their numbers."""

    def __init__(self, config: Config, devices: int, workdir: Path) -> None:
        self.config = config
        self.devices = devices
        self.workdir = workdir
        self.spec = _spec(config)
        self.held_out: Path | None = None
        self.marks: dict[str, CpuMark] = {}
        self.edges: list[EdgeProcess] = []
        self._event = asyncio.Event()  # set at every event any edge prints
        self._broker_pids: list[int] = []
        self._logs: list[IO[bytes]] = []

    @property
    def events(self) -> dict[str, float]:
        """The first edge's events (the plain edge's, or replica r1's)."""
        return self.edges[0].events if self.edges else {}

    async def execute(self) -> dict[str, Any]:
        if self.config.eval_samples is not None:
            self.held_out = self.workdir / "held-out.npz"
            write_held_out(self.config, self.held_out)
        async with self._network() as network:
            self._broker_pids = network.broker_pids
            probe = await self._spawn("probe", self._probe_command())
            for name in self.config.edges.names:
                log = "edge" if name is None else f"edge-{name}"
                process = await self._spawn(log, self._edge_command(network, name))
                self.edges.append(EdgeProcess(name, process))
            readers = [asyncio.create_task(self._read_events(edge)) for edge in self.edges]
            try:
                await self._until_all("started", START_TIMEOUT_S)
                fleets = [
                    await self._spawn(f"devices-{first}", self._fleet_command(network, first))
                    for first in range(0, self.devices, self.config.per_process)
                ]
                try:
                    await self._follow()
                    await self._wait_all(fleets, 120.0)
                finally:
                    for process in fleets:
                        await _stop(process)
            finally:
                for edge in self.edges:
                    await _stop(edge.process)
                for reader in readers:
                    reader.cancel()
                await _stop(probe)
                for log_file in self._logs:
                    log_file.close()
            for edge in self.edges:
                if edge.process.returncode != 0:
                    tail = (self.workdir / f"edge{edge.suffix}.log").read_text()[-3000:]
                    raise RuntimeError(
                        f"the edge {edge.name or ''} failed (exit {edge.process.returncode}):\n"
                        f"{tail}"
                    )
        return self._results()

    # --- brokers --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _network(self) -> AsyncIterator[Network]:
        network = self.config.network
        if network == "local":
            config = BrokerConfig(log_types=("error", "warning"), max_queued_messages=10_000)
            async with LocalBroker(config) as broker:
                assert broker.pid is not None
                url = ["--broker", broker.url]
                yield Network(url, url, [broker.pid])
            return
        # TLS and an account per device, as `ares broker init` / `init-site` / `add-device`
        # provision them: at the core itself, or at a site whose broker is bridged to the core.
        names = [device_name(i) for i in range(self.devices)]
        plan = {SITE: names} if network == "site" else {}
        async with LocalSites(self.workdir / "brokers", plan) as sites:
            core = sites.core
            if network == "core":
                ca = PurePosixPath((core.certs / "ca.crt").absolute())
                for name in names:
                    core.add_device(name, ca_path=ca)
                sites.core_running.reload()  # the passwords: read on SIGHUP
            home = sites.sites[SITE] if network == "site" else core
            configs = self.workdir / "mqtt-configs.json"
            configs.write_text(json.dumps({n: str(home.client_file(n)) for n in names}))
            brokers = [sites.core_running, *sites.site_brokers.values()]
            pids = [b.pid for b in brokers if b.pid is not None]
            yield Network(
                ["--mqtt-config", str(core.client_file("edge"))],
                ["--mqtt-configs", str(configs)],
                pids,
            )

    # --- processes ----------------------------------------------------------------------------

    def _edge_command(self, network: Network, replica: str | None) -> list[str]:
        c = self.config
        command = [
            sys.executable, str(HERE / "scale_edge.py"), *network.edge_args,
            "--devices", str(self.devices), "--rounds", str(c.rounds),
            "--batches", str(c.batches), "--batch-size", str(c.batch_size),
            "--model", c.model, "--dataset", c.dataset, "--policy", c.policy,
            "--split", str(c.split), "--batch-timeout-s", str(c.batch_timeout_s),
            "--compute-workers", str(c.compute_workers),
            "--deadline-floor-s", str(self._round_floor_s()),
            "--workdir", str(self.workdir),
        ]  # fmt: skip
        suffix = "" if replica is None else f"-{replica}"
        command += ["--out", str(self.workdir / f"edge{suffix}.json")]
        if replica is not None:
            command += ["--replica", replica]
        if self.held_out is not None:
            command += ["--data", str(self.held_out)]
        if c.cprofile:
            command += ["--cprofile", str(self.workdir / f"edge{suffix}.prof")]
        if c.switch_interval_ms is not None:
            command += ["--switch-interval-ms", str(c.switch_interval_ms)]
        return command

    def _probe_command(self) -> list[str]:
        return [sys.executable, str(HERE / "lag_probe.py"), "--out",
                str(self.workdir / "probe.json")]  # fmt: skip

    def _round_floor_s(self) -> float:
        # Rounds end when every device uploaded; the deadline is only a backstop for stalls.
        c = self.config
        return 3 * c.batches * (c.think_s * (1 + c.jitter) + c.batch_timeout_s) + 30

    def _fleet_command(self, network: Network, first: int) -> list[str]:
        c = self.config
        spec = self.spec
        count = min(c.per_process, self.devices - first)
        return [
            sys.executable, str(HERE / "scale_devices.py"), *network.fleet_args,
            "--first", str(first), "--count", str(count),
            "--think-s", str(c.think_s), "--jitter", str(c.jitter), "--dataset", c.dataset,
            "--input-shape", json.dumps(list(spec.input_shape)),
            "--classes", str(spec.num_classes),
            "--cut-shapes", json.dumps(cut_shapes(spec)),
            "--samples", str(c.batches * c.batch_size),
            "--out", str(self.workdir / f"devices-{first}.json"),
        ]  # fmt: skip

    async def _spawn(self, name: str, command: list[str]) -> asyncio.subprocess.Process:
        log = (self.workdir / f"{name}.log").open("wb")
        self._logs.append(log)
        # A user's ARES_* settings must not change what the benchmark measures.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARES_")}
        return await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=log, env=env
        )

    async def _read_events(self, edge: EdgeProcess) -> None:
        """File the edge's events as it prints them; mark the CPU counters when the first edge
        starts training and when every edge has finished it."""
        stdout = edge.process.stdout
        assert stdout is not None
        while line := (await stdout.readline()).decode():
            parts = line.split()
            if len(parts) != 3 or parts[0] != "EVENT":
                continue
            event = parts[1]
            edge.events.setdefault(event, float(parts[2]))
            if event == "training" and "training" not in self.marks:
                self.marks["training"] = mark(self._broker_pids)
            if event == "finishing" and all("finishing" in e.events for e in self.edges):
                self.marks["finishing"] = mark(self._broker_pids)
            self._event.set()
        self._event.set()  # its output ended: it exited

    async def _until_all(self, wanted: str, timeout_s: float) -> None:
        """Until every edge printed ``wanted``; raises if one exits before."""
        async with asyncio.timeout(timeout_s):
            while not all(wanted in edge.events for edge in self.edges):
                self._event.clear()
                for edge in self.edges:
                    if edge.process.returncode is not None and wanted not in edge.events:
                        name = f"edge{edge.suffix}"
                        raise RuntimeError(f"{name} exited before {wanted!r}; see {name}.log")
                await self._event.wait()

    async def _follow(self) -> None:
        """Wait for every edge to finish (the CPU counters are marked on the way)."""
        c = self.config
        round_s = c.batches * (c.think_s * (1 + c.jitter) + c.batch_timeout_s)
        budget = START_TIMEOUT_S + c.rounds * (round_s + 60)
        await self._until_all("done", budget)
        async with asyncio.timeout(60):
            for edge in self.edges:
                await edge.process.wait()

    @staticmethod
    async def _wait_all(processes: list[asyncio.subprocess.Process], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            for process in processes:
                await process.wait()

    # --- numbers ------------------------------------------------------------------------------

    def _results(self) -> dict[str, Any]:
        outs = {
            edge.name: json.loads((self.workdir / f"edge{edge.suffix}.json").read_text())
            for edge in self.edges
        }
        # The run's report is the coordinator's (the plain edge's): it holds the rounds.
        main = next((e for e in self.edges if outs[e.name]["coordinated"]), self.edges[0])
        edge = outs[main.name]
        report = json.loads((self.workdir / f"report{main.suffix}.json").read_text())
        fleets = [json.loads(p.read_text()) for p in sorted(self.workdir.glob("devices-*.json"))]
        start, end = self.marks["training"], self.marks["finishing"]
        wall = end.at - start.at
        probe = [
            lag
            for at, lag in json.loads((self.workdir / "probe.json").read_text())
            if start.at <= at <= end.at
        ]
        device_rounds = [d for r in report["rounds"] for d in r["devices"].values()]
        batches = sum(d["batches"] for d in device_rounds)
        log = (self.workdir / f"edge{main.suffix}.log").read_text(errors="replace")
        timing = round_timing(report, [f["round_marks"] for f in fleets], plan_times(log))

        return {
            "model": self.config.model,
            "cut": self.config.split,
            "devices": self.devices,
            "edges": asdict(self.config.edges),
            "edges_label": self.config.edges.label,
            "network": self.config.network,
            "coordinator": main.name,
            "device_processes": len(fleets),
            "rounds_completed": len(report["rounds"]),
            "rounds_all_ok": sum(
                all(d["status"] == "ok" for d in r["devices"].values()) for r in report["rounds"]
            ),
            "training_wall_s": wall,
            "batches": batches,
            "batches_per_s": batches / wall,
            "rounds_batches_per_s": batches / timing["rounds_span_s"]
            if timing["rounds_span_s"]
            else math.nan,
            "offered_batches_per_s": self.devices / self.config.think_s,
            "serving": serving_numbers(report),
            "round_timing": timing,
            "edge_peak_rss_mib": edge.get("peak_rss_mib"),
            "round_durations_s": [r["duration_s"] for r in report["rounds"]],
            "lag_training": edge["phases"]["training"],
            "lag_idle_probe": {
                **summary(probe),
                "over_threshold": sum(1 for lag in probe if lag > TARGET_P99_S),
            },
            "lag_registration": edge["phases"]["registration"],
            "lag_rounds": edge["rounds"],
            "replicas": {  # each edge process by its replica name ("edge": the plain edge)
                name or "edge": {
                    "coordinated": out["coordinated"],
                    "batches": out["counters"].get("batches", 0),
                    "others_traffic": out["counters"].get("others_traffic", 0),
                    "lag_training": out["phases"]["training"],
                    "cpu_share": out["phases"]["training"]["cpu_share"],
                    "peak_rss_mib": out.get("peak_rss_mib"),
                }
                for name, out in outs.items()
            },
            "late_gradients": sum(f["resends"] for f in fleets),
            "failed_batches": sum(f["failed_batches"] for f in fleets),
            "not_ok_device_rounds": sum(d["status"] != "ok" for d in device_rounds),
            "rejections": _merge_counts(f["errors"] for f in fleets),
            "device_failures": _merge_counts(f["failures"] for f in fleets),
            "closed_by_deadline": sum(f["closed"] for f in fleets),
            "rtt_s": summary([x for f in fleets for x in f["rtt_s"]]),
            "edge_server_s": summary([x for f in fleets for x in f["server_s"]]),
            "device_send_slip_s": summary([x for f in fleets for x in f["slip_s"]]),
            "device_loop_lag_p99_s": max(f["loop_lag"]["total_p99_s"] for f in fleets),
            "devices_finished": all(f["finished"] for f in fleets),
            "edge_gc": edge["gc"],
            "cpu_share": {
                # Every edge process's over its own training phase, summed.
                "edge": sum(out["phases"]["training"]["cpu_share"] or 0.0 for out in outs.values()),
                "mosquitto": (end.broker - start.broker) / wall,
                "devices": sum(f["training_cpu_share"] or 0.0 for f in fleets),
                "machine_busy_cores": (end.machine_busy - start.machine_busy) / wall,
            },
            "counters": report.get("counters", {}),
        }


def _merge_counts(counts: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for entry in counts:
        for reason, n in entry.items():
            merged[reason] = merged.get(reason, 0) + n
    return merged


PLAN_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .* round (\d+) plan \(")


def plan_times(log: str) -> dict[int, float]:
    """When the edge (the coordinator) published each round's plan, from its log's lines
    (``logging``'s local time, to the millisecond), as time.time()."""
    times: dict[int, float] = {}
    for line in log.splitlines():
        match = PLAN_LINE.match(line)
        if match:
            at = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            times.setdefault(int(match[2]), at)
    return times


def round_timing(
    report: dict[str, Any],
    fleet_marks: Iterable[dict[str, dict[str, list[float]]]],
    plans: dict[int, float] | None = None,
) -> dict[str, Any]:
    """Each round as the devices lived it, from their processes' round marks (first and last
    round start received, first and last part sent, per round; time.time(), one clock):

    * ``device_windows_s``: the first round start to the last part sent, the devices' work;
    * ``between_rounds_s``: the last part of a round sent to the first start of the next: all
      the edge (or the cluster) does between two rounds, the time no device works;
    * ``start_spread_s``: the first round start to the last, the round starts' fan-out;
    * ``rounds_span_s``: round 1's first start to the last round's last part;
    * ``report_overhead_s``: per round, the (coordinator's) report's ``duration_s`` less its
      slowest device's ``round_s`` (benchmarks/round_overhead.py's measure);
    * with ``plans`` (round -> when the edge published its plan), each gap between rounds in
      two: ``to_plan_s``, the last part sent to the next round's plan (the last part's way in,
      FedAvg, a cluster's shares and merge, the global model's publish, the coordinator's
      evaluation and checkpoint, the planning); ``plan_to_start_s``, the plan to the first
      round start (a cluster's order and its replica's model, the server parts, the round
      starts' weights and their way out).
    """
    merged: dict[int, dict[str, list[float]]] = {}
    for marks in fleet_marks:
        for round_no, kinds in marks.items():
            into = merged.setdefault(int(round_no), {})
            for kind, (first, last) in kinds.items():
                have = into.get(kind)
                into[kind] = [first, last] if have is None else [min(have[0], first),
                                                                 max(have[1], last)]  # fmt: skip
    rounds = sorted(r for r, m in merged.items() if "start" in m and "upload" in m)
    windows = [merged[r]["upload"][1] - merged[r]["start"][0] for r in rounds]
    between = [
        merged[r + 1]["start"][0] - merged[r]["upload"][1]
        for r in rounds
        if r + 1 in merged and "start" in merged[r + 1]
    ]
    overhead = [
        r["duration_s"] - max((d.get("round_s") or 0.0 for d in r["devices"].values()), default=0)
        for r in report["rounds"]
    ]
    plans = plans or {}
    follows = [r for r in rounds if r + 1 in merged and "start" in merged[r + 1] and r + 1 in plans]
    return {
        "rounds": rounds,
        "to_plan_s": [plans[r + 1] - merged[r]["upload"][1] for r in follows],
        "plan_to_start_s": [merged[r + 1]["start"][0] - plans[r + 1] for r in follows],
        "device_windows_s": windows,
        "between_rounds_s": between,
        "start_spread_s": [merged[r]["start"][1] - merged[r]["start"][0] for r in rounds],
        "rounds_span_s": merged[rounds[-1]]["upload"][1] - merged[rounds[0]]["start"][0]
        if rounds
        else 0.0,
        "report_overhead_s": overhead,
    }


def serving_numbers(report: dict[str, Any]) -> dict[str, float]:
    """The edge's serving rate, from its run report: batches over the rounds' serving windows.

    A round's window runs from its start to the last device's part held at the edge (the
    longest ``round_s``); the edge's aggregation and evaluation between rounds fall outside.
    ``step_s``: the edge's server step (forward, backward, optimiser step, the gradient's
    encoding) per batch; ``busy_workers``: the compute workers those steps kept busy on average
    (the thread pool's size when the edge's compute is the bottleneck).
    """
    windows = [
        max((d.get("round_s") or 0.0 for d in r["devices"].values()), default=0.0)
        for r in report["rounds"]
    ]
    device_rounds = [d for r in report["rounds"] for d in r["devices"].values()]
    batches = sum(d["batches"] for d in device_rounds)
    server_s = sum(d.get("server_s") or 0.0 for d in device_rounds)
    serving_s = sum(windows)
    return {
        "serving_s": serving_s,
        "batches": batches,
        "batches_per_s": batches / serving_s if serving_s > 0 else math.nan,
        "step_s": server_s / batches if batches else math.nan,
        "busy_workers": server_s / serving_s if serving_s > 0 else math.nan,
    }


def held_out_subset(labels: NDArray[np.int64], size: int, num_classes: int) -> NDArray[np.intp]:
    """Indices of ``size`` samples taken class by class in turn (each class's first ones), so
    every class that has samples is in the subset when ``size`` >= the classes."""
    if size < num_classes:
        raise ValueError(f"a held-out set of {size} cannot hold all {num_classes} classes")
    members = [list(np.flatnonzero(labels == c)) for c in range(num_classes)]
    chosen: list[int] = []
    for rank in range(max((len(m) for m in members), default=0)):
        chosen.extend(int(m[rank]) for m in members if rank < len(m))
    return np.asarray(sorted(chosen[:size]), dtype=np.intp)


def write_held_out(config: Config, path: Path) -> None:
    """The edge's held-out set as a .npz: ``eval_samples`` of the dataset's test split."""
    assert config.eval_samples is not None
    data = load_dataset(config.dataset, "test")
    index = held_out_subset(data.y, config.eval_samples, data.num_classes)
    np.savez(path, x=data.x[index], y=data.y[index])


def model_facts(spec: ModelSpec, cut: int) -> dict[str, Any]:
    """What the edge holds at ``cut``: its blocks and parameters; the activation per sample."""
    model = build_model(spec)
    blocks = num_blocks(spec)
    return {
        "blocks": blocks,
        "edge_blocks": blocks - cut,
        "params": sum(p.numel() for p in model.parameters()),
        "edge_params": sum(p.numel() for block in list(model)[cut:] for p in block.parameters()),
        "act_values_per_sample": math.prod(cut_shapes(spec)[cut - 1]),
    }


def _spec(config: Config) -> ModelSpec:
    data = load_dataset(config.dataset, "test")
    return ModelSpec(config.model, data.input_shape, data.num_classes)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


# ---------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f}"


def rate(per_s: float) -> str:
    """A rate, to a tenth below 100 per second."""
    return "-" if math.isnan(per_s) else f"{per_s:.1f}" if per_s < 100 else f"{per_s:.0f}"


def print_results(config: Config, results: list[dict[str, Any]]) -> None:
    print(
        f"\nedge scale: model {config.model} at cut {config.split}, batch {config.batch_size}, "
        f"{config.rounds} rounds x {config.batches} batches, think {config.think_s:g} s "
        f"(+-{config.jitter:.0%}) per batch, batch timeout {config.batch_timeout_s:g} s; edge: "
        f"{config.compute_workers} compute workers, GIL switch interval "
        f"{config.switch_interval_ms or 5:g} ms"
    )
    rows = []
    for r in results:
        lag = r["lag_training"]
        rows.append((
            r["devices"], f"{r['rounds_completed']}/{r['rounds_all_ok']}",
            f"{rate(r['batches_per_s'])} / {rate(r['offered_batches_per_s'])}",
            f"{ms(lag['p50_s'])} / {ms(lag['p99_s'])} / {ms(lag['max_s'])}",
            f"{lag['over_threshold']}/{lag['samples']}",
            f"{ms(r['lag_idle_probe']['p99'])} / {ms(r['lag_idle_probe']['max'])}",
            f"{ms(r['lag_registration']['p99_s'])} / {ms(r['lag_registration']['max_s'])}",
            f"{ms(r['rtt_s']['median'])} / {ms(r['rtt_s']['p99'])}",
            f"{ms(r['edge_server_s']['median'])} / {ms(r['edge_server_s']['p99'])}",
            f"{r['late_gradients']}/{r['failed_batches']}/{r['not_ok_device_rounds']}"
            f"/{sum(r['rejections'].values())}",
            f"{r['cpu_share']['edge']:.0%} / {r['cpu_share']['mosquitto']:.0%} / "
            f"{r['cpu_share']['devices']:.0%} ({r['cpu_share']['machine_busy_cores']:.2f})",
        ))  # fmt: skip
    print_table(
        ["devices", "rounds/ok", "batches/s / offered", "lag p50/p99/max ms", ">20ms",
         "idle p99/max",
         "reg. lag p99/max", "rtt p50/p99 ms", "edge p50/p99 ms", "late/failed/not-ok/rej",
         "CPU edge/mosq/devs (cores busy)"],
        rows,
    )  # fmt: skip
    print(
        "  lag: the edge's event loop while training (probe every 10 ms); idle: the same probe "
        "in a process doing nothing\n  else (the machine's own scheduling noise); reg.: the "
        "edge while the devices registered.\n"
        "  rtt: a device's batch sent -> its gradient in hand (think excluded); edge: the "
        "edge's own receipt -> reply (queueing, server step, encode).\n"
        "  late: gradients not back within the batch timeout (the device re-sent); failed: "
        "none after every re-send;\n"
        "  not-ok: device-rounds the edge marked straggler or dropped; rej: the edge's "
        "rejections. The devices' own send slip\n"
        "  (how late a batch left after its think time) is reported in the JSON to show they "
        "sent on time."
    )
    for r in results:
        slip, gc2 = r["device_send_slip_s"], r["edge_gc"]["2"]
        print(
            f"  {r['devices']} devices: device send slip p99 {ms(slip['p99'])} ms, device-process "
            f"loop lag p99 {ms(r['device_loop_lag_p99_s'])} ms; round durations "
            + ", ".join(f"{d:.1f}" for d in r["round_durations_s"])
            + f" s; the edge's full garbage collections: {gc2['count']}, longest "
            f"{ms(gc2['max_s'])} ms (the first is start-up's, before any device connects)"
        )
        if r["rejections"] or r["device_failures"]:
            print(f"    rejections {r['rejections']}; device failures {r['device_failures']}")
    target = [r for r in results if r["devices"] == TARGET_DEVICES]
    if target:
        p99 = target[0]["lag_training"]["p99_s"]
        verdict = "met" if p99 < TARGET_P99_S else "MISSED"
        print(f"  target ({TARGET_DEVICES} devices, p99 loop lag < {TARGET_P99_S * 1e3:.0f} ms): "
              f"{verdict} ({ms(p99)} ms)")  # fmt: skip


def print_models(config: Config, results: list[dict[str, Any]]) -> None:
    """The per-model summary: the edge's serving rate, its step per batch, its memory."""
    print(
        f"\nedge serving rate per model: cut {config.split}, batch {config.batch_size}, "
        f"{config.rounds} rounds x {config.batches} batches per device, think "
        f"{config.think_s:g} s per batch; edge: {config.compute_workers} compute workers x 1 "
        f"torch thread, {config.eval_samples} held-out samples"
    )
    rows = []
    for r in results:
        serving, facts = r["serving"], r["model_facts"]
        rows.append((
            r["model"], f"{facts['edge_blocks']}/{facts['blocks']}",
            f"{facts['edge_params'] / 1e6:.2f}M",
            f"{facts['act_values_per_sample'] * 4 * config.batch_size / 2**20:.2f}",
            r["devices"], rate(r["offered_batches_per_s"]), rate(serving["batches_per_s"]),
            rate(r["batches_per_s"]), ms(serving["step_s"]), f"{serving['busy_workers']:.2f}",
            f"{ms(r['rtt_s']['median'])} / {ms(r['rtt_s']['p99'])}",
            f"{r['late_gradients']}/{r['failed_batches']}/{r['not_ok_device_rounds']}",
            f"{r['cpu_share']['edge']:.0%} / {r['cpu_share']['mosquitto']:.0%} / "
            f"{r['cpu_share']['devices']:.0%}",
            "-" if r["edge_peak_rss_mib"] is None else f"{r['edge_peak_rss_mib']:.0f}",
        ))  # fmt: skip
    print_table(
        ["model", "edge blocks", "edge params", "act MiB/batch", "devices", "offered/s",
         "served/s", "(whole run)", "edge step ms", "busy workers", "rtt p50/p99 ms",
         "late/failed/not-ok", "CPU edge/mosq/devs", "edge peak MiB"],
        rows,
    )  # fmt: skip
    print(
        "  served/s: batches over the rounds' serving windows (round start -> the last part "
        "held); whole run: over the training\n  phase, the edge's aggregation and evaluation "
        "between rounds included. edge step: its server step per batch\n  (forward, backward, "
        "optimiser step, the gradient's encoding); busy workers: compute workers those steps "
        "kept busy\n  on average. act: the activations of one batch at the cut (float32), the "
        "gradient as large."
    )


def runs(config: Config) -> list[Config]:
    """One configuration per run: per model, edge set and network (the device counts are
    the inner loop, in Run)."""
    return [
        dataclasses.replace(config, model=model, edges=edges, network=network)
        for model in config.models or (config.model,)
        for edges in config.edge_sets or (config.edges,)
        for network in config.networks or (config.network,)
    ]


def workdir_name(config: Config, devices: int) -> str:
    parts = [config.model] if config.models else []
    if config.edge_sets:
        parts.append(config.edges.slug)
    if config.networks:
        parts.append(config.network)
    return "-".join([*parts, f"devices-{devices}"])


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def spread(values: Sequence[float]) -> str:
    """Mean and range of ``values``, in ms."""
    if not values:
        return "-"
    return f"{ms(mean(values))} ({ms(min(values))}-{ms(max(values))})"


def per_edge(result: dict[str, Any], show: Any) -> str:
    return " / ".join(show(r) for r in result["replicas"].values())


def print_replicas(config: Config, results: list[dict[str, Any]]) -> None:
    """Replica mode: one row per edge set and device count; the scale-out and the extra time
    between rounds, against the plain edge's row of the same device count."""
    print(
        f"\nedge replicas: model {config.model} at cut {config.split}, batch {config.batch_size}, "
        f"{config.rounds} rounds x {config.batches} batches, think {config.think_s:g} s "
        f"(+-{config.jitter:.0%}) per batch; each edge: {config.compute_workers} compute workers"
    )
    rows = []
    for r in results:
        timing, cpu = r["round_timing"], r["cpu_share"]
        rows.append((
            r["edges_label"], r["devices"], f"{r['rounds_completed']}/{r['rounds_all_ok']}",
            f"{rate(r['rounds_batches_per_s'])} / {rate(r['serving']['batches_per_s'])} / "
            f"{rate(r['offered_batches_per_s'])}",
            per_edge(r, lambda e: str(e["batches"])),
            per_edge(r, lambda e: ms(e["lag_training"]["p99_s"])),
            per_edge(r, lambda e: f"{e['cpu_share'] or 0:.2f}")
            + f" / {cpu['mosquitto']:.2f} / {cpu['devices']:.2f} ({cpu['machine_busy_cores']:.2f})",
            spread(timing["between_rounds_s"]),
            f"{ms(mean(timing['to_plan_s']))} / {ms(mean(timing['plan_to_start_s']))}",
            spread(timing["report_overhead_s"]),
            f"{ms(r['rtt_s']['median'])} / {ms(r['rtt_s']['p99'])}",
            f"{r['late_gradients']}/{r['failed_batches']}/{r['not_ok_device_rounds']}"
            f"/{sum(r['rejections'].values())}",
        ))  # fmt: skip
    print_table(
        ["edges", "devices", "rounds/ok", "served/s rounds / windows / offered",
         "batches per edge", "lag p99 ms per edge", "CPU per edge / mosq / devs (busy)",
         "between rounds ms", "to plan / to start", "report overhead ms", "rtt p50/p99 ms",
         "late/failed/not-ok/rej"],
        rows,
    )  # fmt: skip
    print(
        "  served/s: batches per second over the rounds (round 1's first start to the last "
        "round's last part) / over the rounds'\n  serving windows (each round's start to its "
        "last part held, from the coordinator's report) / offered (devices / think time).\n"
        "  per edge: the plain edge's, or r1 / r2 ...; CPU: cores, each process over its own "
        "training phase; busy: the machine's\n  busy cores (of "
        f"{os.cpu_count()}) over the training phase. between rounds: the last part of a "
        "round sent to the next round's first\n  start, as the devices saw it (mean, range), in "
        "two: to plan, the last part to the next round's plan published (FedAvg;\n  shares, "
        "merge, the model's publish, the coordinator's evaluation and checkpoint; planning); to "
        "start, the plan to\n  the first round start (order, model, server parts, round "
        "starts). report overhead: a round's duration_s less its\n  slowest device's round_s."
    )
    for r in results:
        base = next(
            (b for b in results if not b["edges"]["cluster"] and b["devices"] == r["devices"]),
            None,
        )
        if base is None or base is r:
            continue
        gain = r["rounds_batches_per_s"] / base["rounds_batches_per_s"]
        gain_windows = r["serving"]["batches_per_s"] / base["serving"]["batches_per_s"]
        t, b = r["round_timing"], base["round_timing"]
        extra = mean(t["between_rounds_s"]) - mean(b["between_rounds_s"])
        to_plan = mean(t["to_plan_s"]) - mean(b["to_plan_s"])
        to_start = mean(t["plan_to_start_s"]) - mean(b["plan_to_start_s"])
        extra_report = mean(r["round_timing"]["report_overhead_s"]) - mean(
            base["round_timing"]["report_overhead_s"]
        )
        others = sum(e["others_traffic"] for e in r["replicas"].values())
        print(
            f"  {r['edges_label']}, {r['devices']} devices: served x{gain:.2f} over the rounds, "
            f"x{gain_windows:.2f} over the serving windows (1 edge: "
            f"{rate(base['rounds_batches_per_s'])} / {rate(base['serving']['batches_per_s'])}); "
            f"between rounds {ms(extra)} ms more a round ({ms(to_plan)} to the plan, "
            f"{ms(to_start)} to the start), report overhead {ms(extra_report)} ms more; "
            f"machine busy {r['cpu_share']['machine_busy_cores']:.2f} of "
            f"{os.cpu_count()} cores; {others} device messages a replica read and ignored "
            "(another replica's devices)"
        )


def print_sites(config: Config, results: list[dict[str, Any]]) -> None:
    """Site mode: the same run with the devices on the core and behind a bridged site."""
    print(
        f"\nsite bridge: {config.edges.label}, model {config.model} at cut {config.split}, batch "
        f"{config.batch_size}, {config.rounds} rounds x {config.batches} batches, think "
        f"{config.think_s:g} s per batch; devices over TLS with their own accounts"
    )
    where = {"local": "a plain broker", "core": "the core", "site": f"site {SITE} (bridged)"}
    rows = []
    for r in results:
        timing, cpu = r["round_timing"], r["cpu_share"]
        rows.append((
            where[r["network"]], r["devices"], f"{r['rounds_completed']}/{r['rounds_all_ok']}",
            f"{rate(r['rounds_batches_per_s'])} / {rate(r['serving']['batches_per_s'])} / "
            f"{rate(r['offered_batches_per_s'])}",
            f"{ms(r['rtt_s']['median'])} / {ms(r['rtt_s']['p99'])}",
            f"{ms(r['edge_server_s']['median'])}",
            f"{mean(timing['device_windows_s']):.2f}", spread(timing["between_rounds_s"]),
            f"{mean(timing['start_spread_s']) * 1e3:.1f}",
            f"{cpu['edge']:.2f} / {cpu['mosquitto']:.2f} / {cpu['devices']:.2f} "
            f"({cpu['machine_busy_cores']:.2f})",
            f"{r['late_gradients']}/{r['failed_batches']}/{r['not_ok_device_rounds']}",
        ))  # fmt: skip
    print_table(
        ["devices at", "devices", "rounds/ok", "served/s rounds / windows / offered",
         "rtt p50/p99 ms", "edge p50 ms", "device window s", "between rounds ms",
         "start spread ms", "CPU edge / brokers / devs (busy)", "late/failed/not-ok"],
        rows,
    )  # fmt: skip
    print(
        "  device window: a round's first start to its last part sent (mean over rounds); "
        "between rounds: a round's last part\n  sent to the next round's first start; start "
        "spread: a round's first start to its last; brokers: the core's and the\n  site's "
        "Mosquitto together."
    )
    by = {(r["network"], r["devices"]): r for r in results}
    for (network, devices), r in by.items():
        core = by.get(("core", devices))
        if network != "site" or core is None:
            continue
        t, c = r["round_timing"], core["round_timing"]
        window = mean(t["device_windows_s"]) - mean(c["device_windows_s"])
        between = mean(t["between_rounds_s"]) - mean(c["between_rounds_s"])
        rtt = r["rtt_s"]["median"] - core["rtt_s"]["median"]
        print(
            f"  {devices} devices: the bridge adds {ms(window + between)} ms a round "
            f"({ms(window)} ms to the devices' window, {ms(between)} ms between rounds); "
            f"{ms(rtt)} ms to a batch's round trip at the median"
        )


async def run_all(config: Config, keep: Path | None) -> list[dict[str, Any]]:
    results = []
    for run_config in runs(config):
        for devices in config.devices:
            what = [run_config.model, run_config.edges.label]
            if config.networks:
                what.append(f"devices at the {run_config.network}")
            print(f"running {', '.join(what)}, {devices} devices ...", flush=True)
            with contextlib.ExitStack() as stack:
                if keep is None:
                    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                else:
                    workdir = keep / workdir_name(run_config, devices)
                    workdir.mkdir(parents=True, exist_ok=True)
                began = time.monotonic()
                result = await Run(run_config, devices, workdir).execute()
                result["wall_s"] = time.monotonic() - began
                if config.models:
                    result["model_facts"] = model_facts(_spec(run_config), config.split)
                results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", default="100,200,500", help="device counts, comma separated")
    parser.add_argument("--quick", action="store_true", help="a few seconds: smoke test only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=10, help="batches per round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--think-s", type=float, default=1.0, help="device compute per batch")
    parser.add_argument("--jitter", type=float, default=0.2)
    parser.add_argument("--split", type=int, default=1)
    parser.add_argument("--model", default="tiny")
    parser.add_argument(
        "--models", help="per-model mode: these models, comma separated, and their summary"
    )
    parser.add_argument(
        "--eval-samples",
        type=int,
        help=f"the edge's held-out samples (default: the test split; with --models "
        f"{MODELS_EVAL_SAMPLES})",
    )
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--policy", default="sl", choices=POLICIES.names())
    parser.add_argument("--batch-timeout-s", type=float, default=5.0)
    parser.add_argument("--per-process", type=int, default=100, help="light devices a process")
    parser.add_argument("--cprofile", action="store_true", help="profile the edge's loop thread")
    parser.add_argument("--compute-workers", type=int, default=2, help="the edge's thread pool")
    parser.add_argument(
        "--switch-interval-ms", type=float, help="the edge's sys.setswitchinterval (default 5)"
    )
    parser.add_argument(
        "--replicas",
        help="replica mode: edge sets, comma separated: 1 the plain edge, N > 1 that many "
        "replicas r1..rN on one broker, 1r a cluster of one replica",
    )
    parser.add_argument(
        "--sites",
        action="store_true",
        help="site mode: the devices over TLS at the core, then at a site bridged to the core",
    )
    parser.add_argument("--keep", type=Path, help="keep logs, reports and profiles here")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    models = tuple(m for m in (args.models or "").split(",") if m)
    try:
        edge_sets = tuple(EdgeSet.parse(t) for t in (args.replicas or "").split(",") if t)
    except ValueError as exc:
        parser.error(f"--replicas: {exc}")
    if sum(bool(mode) for mode in (models, edge_sets, args.sites)) > 1:
        parser.error("--models, --replicas and --sites are separate modes: one at a time")
    eval_samples = args.eval_samples
    if models and eval_samples is None:
        eval_samples = MODELS_EVAL_SAMPLES
    config = Config(
        devices=(8,) if args.quick else tuple(int(n) for n in args.devices.split(",")),
        rounds=2 if args.quick else args.rounds,
        batches=3 if args.quick else args.batches,
        batch_size=args.batch_size,
        think_s=0.1 if args.quick else args.think_s,
        jitter=args.jitter,
        split=args.split,
        model=args.model,
        dataset=args.dataset,
        policy=args.policy,
        batch_timeout_s=args.batch_timeout_s,
        per_process=4 if args.quick else args.per_process,
        cprofile=args.cprofile,
        compute_workers=args.compute_workers,
        switch_interval_ms=args.switch_interval_ms,
        eval_samples=eval_samples,
        models=models,
        edge_sets=edge_sets,
        networks=("core", "site") if args.sites else (),
    )
    for model in models or (config.model,):
        blocks = num_blocks(_spec(dataclasses.replace(config, model=model)))
        if not 1 <= config.split < blocks:
            parser.error(f"--split {config.split}: {model} has cuts 1..{blocks - 1} with work "
                         "left on the edge")  # fmt: skip
    # Every device holds a connection to the broker: Mosquitto and the fleets need the fds.
    raise_open_files_limit(4 * max(config.devices) + 1024)
    info = machine_info()
    print_machine(info)
    results = asyncio.run(run_all(config, args.keep))
    if models:
        for model in models:
            mine = [r for r in results if r["model"] == model]
            print_results(dataclasses.replace(config, model=model), mine)
        print_models(config, results)
    elif edge_sets:
        print_replicas(config, results)
    elif args.sites:
        print_sites(config, results)
    else:
        print_results(config, results)
    print(f"load average now {os.getloadavg()[0]:.2f} (was {info['load_average_1m']})")
    if args.json:
        write_json(args.json, {"machine": info, "config": asdict(config), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
