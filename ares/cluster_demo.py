"""``ares demo --edges E --sites S``: one training run served by several edge replicas.

As ``ares demo`` (:mod:`ares.demo`), every part is a process of its own and the demo only
orchestrates, with more parts: with sites, a core broker and S site brokers bridged to it
(``testbed.sites.LocalSites``), else one private broker; E replicas ``ares edge --replica
edge-K`` on the core (replica K at site K, round the sites); the devices dealt round the sites in
turn (``ares device --site site-K`` with its site's generated client config, TLS included).

The demo reads the core as an observer: the coordinator's edge status for progress, its round
orders for who serves whom in each round, and each replica's status for its site. At the end it
prints the coordinator's per-round table and, per replica, what it served and where its log and
report are. The coordinator's report (the one with the rounds) is copied to the run's report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import SecretStr

import runtime
from ares.demo import (
    DemoOptions,
    DeviceLaunch,
    RoundProgress,
    RunResult,
    Say,
    _Processes,
    _quiet,
    _tail,
    child_environment,
    print_outcome,
)
from broker import BrokerConfig, LocalBroker
from schemas import EdgeStatus, SchemaError, Topics, parse_json
from schemas.cluster import ReplicaStatus, RoundOrder
from schemas.report import RunReport
from schemas.topics import ClusterChannel
from testbed.sites import LocalSites
from transport import Message, MqttLink, MqttSettings

MQTT_ENV = "ARES_MQTT__"  # the variables of the [mqtt] settings


@dataclass(frozen=True)
class ClusterLayout:
    """Where the parts run: replicas edge-1..E; sites site-1..S (0: one broker, no sites);
    replica K at site K and device I at site I+1, each dealt round the sites in turn."""

    edges: int
    sites: int = 0

    @classmethod
    def from_flags(cls, edges: int | None, sites: int | None, devices: int) -> ClusterLayout:
        """``--edges`` and ``--sites`` checked: a ValueError (one line) for a layout that makes
        no sense. Either alone means the other's default: one replica; no sites."""
        if edges is not None and edges < 1:
            raise ValueError(f"--edges must be at least 1, got {edges}")
        if sites is not None and sites < 1:
            raise ValueError(f"--sites must be at least 1 (leave it out: one broker), got {sites}")
        if sites is not None and sites > devices:
            raise ValueError(
                f"--sites {sites} needs at least as many devices, got {devices}: "
                "every site has a device"
            )
        return cls(edges=edges or 1, sites=sites or 0)

    @property
    def replicas(self) -> tuple[str, ...]:
        return tuple(f"edge-{k}" for k in range(1, self.edges + 1))

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(f"site-{k}" for k in range(1, self.sites + 1))

    def replica_site(self, replica: str) -> str | None:
        if not self.sites:
            return None
        return self.site_names[self.replicas.index(replica) % self.sites]

    def device_sites(self, device_ids: Sequence[str]) -> dict[str, str]:
        """Each device's site ({} without sites)."""
        if not self.sites:
            return {}
        return {device: self.site_names[i % self.sites] for i, device in enumerate(device_ids)}

    def describe(self) -> str:
        """``2 edge replicas, 2 sites``."""
        replicas = f"{self.edges} edge replica{'s' if self.edges != 1 else ''}"
        where = f"{self.sites} site{'s' if self.sites != 1 else ''}" if self.sites else "one broker"
        return f"{replicas}, {where}"


@dataclass(frozen=True)
class ClusterDemo:
    """One scaled-out run: the demo's options (each device's flags name its site, if any) and
    the layout."""

    options: DemoOptions
    layout: ClusterLayout

    def replica_report(self, replica: str) -> Path:
        return self.options.run_dir / f"{replica}-report.json"

    def replica_argv(self, replica: str) -> list[str]:
        """A replica's ``ares`` arguments: the edge's, with its own name, site, checkpoint and
        report (the broker comes in ARES_MQTT__* variables)."""
        site = self.layout.replica_site(replica)
        return [
            *self.options.edge_argv(replica, self.replica_report(replica)),
            "--replica", replica, *(("--site", site) if site else ()),
        ]  # fmt: skip

    @property
    def device_sites(self) -> dict[str, str]:
        return self.layout.device_sites([d.device_id for d in self.options.devices])


def with_sites(options: DemoOptions, layout: ClusterLayout) -> DemoOptions:
    """``options`` whose devices declare their sites (``--site``)."""
    sites = layout.device_sites([d.device_id for d in options.devices])
    if not sites:
        return options
    devices = tuple(
        DeviceLaunch(d.device_id, (*d.flags, "--site", sites[d.device_id]), d.spec)
        for d in options.devices
    )
    return replace(options, devices=devices)


# --- who serves whom, as read on the core -------------------------------------------------------


def natural(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key: dev-2 before dev-10."""
    parts = re.split(r"(\d+)", name)
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in parts)


def serving_of(order: RoundOrder) -> dict[str, list[str]]:
    """Each replica's devices in ``order``, by replica name, devices sorted."""
    serving: dict[str, list[str]] = {}
    for device in sorted(order.devices, key=natural):
        serving.setdefault(order.devices[device].replica, []).append(device)
    return {replica: serving[replica] for replica in sorted(serving, key=natural)}


def serving_line(order: RoundOrder, replicas: Mapping[str, ReplicaStatus]) -> str:
    """``round 2: edge-1 serves dev-0, dev-2 (site-1); edge-2 serves dev-1, dev-3 (site-2)``;
    a replica up but given no device "serves none"; a make-up attempt is named."""
    serving = serving_of(order)
    idle = [name for name, status in replicas.items() if status.state == "up"]
    parts = []
    for replica in sorted({*serving, *idle}, key=natural):
        devices = ", ".join(serving.get(replica, [])) or "none"
        status = replicas.get(replica)
        site = f" ({status.site})" if status is not None and status.site else ""
        parts.append(f"{replica} serves {devices}{site}")
    attempt = f" attempt {order.attempt}" if order.attempt else ""
    return f"round {order.round}{attempt}: " + "; ".join(parts)


@dataclass
class ServingBoard:
    """The cluster's retained state as the demo reads it: each replica's last status, and each
    round's latest order (a make-up attempt replaces the round's first)."""

    topics: Topics
    replicas: dict[str, ReplicaStatus] = field(default_factory=dict)
    orders: dict[int, RoundOrder] = field(default_factory=dict)
    _shown: set[str] = field(default_factory=set)

    def take(self, topic: str, payload: bytes) -> str | None:
        """Read one message; a line to show when it is an order not shown yet. Messages that
        are not the cluster's, cleared ones and bad ones are passed over."""
        parsed = self.topics.parse_cluster_topic(topic)
        if parsed is None or not payload:
            return None
        channel, name = parsed
        try:
            if channel is ClusterChannel.REPLICA:
                status = parse_json(ReplicaStatus, payload)
                if status.replica == name:
                    self.replicas[name] = status
                return None
            if channel is not ClusterChannel.ORDER:
                return None
            order = parse_json(RoundOrder, payload)
        except SchemaError:
            return None
        self.orders[order.round] = order
        line = serving_line(order, self.replicas)
        if line in self._shown:  # the same order again (a new coordinator's, a reconnect)
            return None
        self._shown.add(line)
        return line

    def up(self) -> set[str]:
        return {name for name, status in self.replicas.items() if status.state == "up"}

    def served(self) -> dict[str, list[str]]:
        """Each replica's devices over the rounds, by the rounds' latest orders."""
        served: dict[str, set[str]] = {}
        for order in self.orders.values():
            for replica, devices in serving_of(order).items():
                served.setdefault(replica, set()).update(devices)
        return {name: sorted(devices, key=natural) for name, devices in served.items()}


# --- running it ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterResult:
    """How the run ended (``run.report``: the coordinator's), who coordinated, what the board
    read, each replica's report where readable, and the process whose log explains a failure."""

    run: RunResult
    board: ServingBoard
    coordinator: str | None = None
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    culprit: str = ""


def run_cluster_demo(demo: ClusterDemo) -> int:
    """``ares demo --edges/--sites``: one run, then the table and the replicas; the exit status."""
    result = run_cluster(demo)
    options = demo.options
    if result.run.code == 130:
        print("\nares demo: interrupted; stopped every process", file=sys.stderr)
        return 130
    if not result.run.ok or result.run.report is None:
        log = options.run_dir / f"{result.culprit or demo.layout.replicas[0]}.log"
        print(f"ares demo: {result.run.problem}; see {log}")
        print(_tail(log), file=sys.stderr)
        return 1
    print_outcome(RunReport.model_validate(result.run.report), result.run.wall_s, options)
    for line in replica_lines(demo, result):
        print(line)
    return 0


def replica_lines(demo: ClusterDemo, result: ClusterResult) -> list[str]:
    """Per replica: its site, whether it coordinated, whom it served, its log and report."""
    served = result.board.served()
    lines = ["replicas:"]
    for replica in demo.layout.replicas:
        roles = [s for s in (demo.layout.replica_site(replica),) if s]
        if replica == result.coordinator:
            roles.append("coordinator")
        role = f" ({', '.join(roles)})" if roles else ""
        batches = result.reports.get(replica, {}).get("counters", {}).get("batches", 0)
        devices = ", ".join(served.get(replica, [])) or "no device"
        lines.append(
            f"  {replica}{role}: served {devices}; {batches} batches; "
            f"log {demo.options.run_dir / f'{replica}.log'}; report {demo.replica_report(replica)}"
        )
    return lines


def run_cluster(demo: ClusterDemo) -> ClusterResult:
    """Start the brokers, the replicas, then the devices; follow the run; stop them all."""
    options = demo.options
    logging.getLogger("broker").setLevel(logging.WARNING)  # keep the demo's own output tidy
    logging.getLogger("testbed").setLevel(logging.WARNING)
    logging.getLogger("transport").setLevel(logging.WARNING)  # the demo's own link's connects
    options.run_dir.mkdir(parents=True, exist_ok=True)
    for path in (options.report, *map(demo.replica_report, demo.layout.replicas)):
        path.unlink(missing_ok=True)  # an earlier run's: never mistaken for this one's
    say = print if options.verbose else _quiet
    say(f"ares demo: {demo.layout.describe()}, {len(options.devices)} devices, "
        f"{options.rounds} rounds; logs in {options.run_dir}")  # fmt: skip
    board = ServingBoard(Topics(_prefix(options)))
    outcome = _Outcome()
    started = time.perf_counter()
    try:
        code = runtime.run(lambda: _run(demo, board, outcome, say))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = RunResult(130, time.perf_counter() - started, options.run_dir, None,
                                "interrupted")  # fmt: skip
        return ClusterResult(interrupted, board)
    wall = time.perf_counter() - started

    def failed(problem: str, code: int = 1) -> ClusterResult:
        run = RunResult(code, wall, options.run_dir, None, problem)
        return ClusterResult(run, board, reports=reports, culprit=outcome.culprit)

    reports = _read_reports(demo)
    if code != 0:
        return failed(outcome.problem or f"gave up after {options.timeout_s:.0f} s", code)
    # The coordinator's report holds the rounds; a replica's, its own counters.
    with_rounds = {name: len(report.get("rounds") or []) for name, report in reports.items()}
    coordinator = max(with_rounds, key=lambda name: with_rounds[name], default=None)
    if coordinator is None or not with_rounds[coordinator]:
        return failed(f"no replica's report has the rounds ({len(reports)} readable)")
    shutil.copyfile(demo.replica_report(coordinator), options.report)
    run = RunResult(0, wall, options.run_dir, reports[coordinator])
    return ClusterResult(run, board, coordinator, reports)


@dataclass
class _Outcome:
    """What went wrong in the run, told by the coroutine that saw it."""

    problem: str = ""
    culprit: str = ""


def _prefix(options: DemoOptions) -> str:
    return (options.mqtt or MqttSettings()).prefix


def _read_reports(demo: ClusterDemo) -> dict[str, dict[str, Any]]:
    reports = {}
    for replica in demo.layout.replicas:
        with contextlib.suppress(OSError, ValueError):
            reports[replica] = json.loads(demo.replica_report(replica).read_text())
    return reports


async def _run(demo: ClusterDemo, board: ServingBoard, outcome: _Outcome, say: Say) -> int:
    options = demo.options
    async with contextlib.AsyncExitStack() as stack:
        network = await _Network.start(demo, stack, say)
        topics = board.topics
        subscriptions = [
            (topics.edge_status, 1),
            (topics.cluster_order, 1),
            (f"{topics.prefix}/cluster/{ClusterChannel.REPLICA.value}/+", 1),
        ]
        link = await stack.enter_async_context(
            MqttLink(network.follower(), f"ares-demo-{os.getpid()}", subscriptions)
        )
        processes = stack.enter_context(_Processes(options.run_dir, say))
        for replica in demo.layout.replicas:
            processes.start(replica, demo.replica_argv(replica), network.edge_environment())
        progress = RoundProgress(options.rounds, options.label, options.progress,
                                 len(options.devices))  # fmt: skip
        with progress:
            watch = _Watch(demo, link, processes, progress, board, outcome)
            # Registration is not retained: a replica hears only the hellos sent once it is
            # subscribed, so the devices start when every replica says it is up.
            code = await watch.until_replicas_up()
            if code is not None:
                return code
            for device in options.devices:
                argv, env = network.device_start(device)
                processes.start(device.device_id, argv, env)
            code = await watch.until_replicas_exit()
        await asyncio.to_thread(processes.wait_all, 30.0)
        return code


class _Network:
    """The run's brokers, and how each process reaches them."""

    def __init__(self, demo: ClusterDemo, sites: LocalSites | None, url: str) -> None:
        self.demo = demo
        self.sites = sites
        self.url = url  # where the replicas connect: the core's loopback listener

    @classmethod
    async def start(cls, demo: ClusterDemo, stack: contextlib.AsyncExitStack, say: Say) -> _Network:
        options, layout = demo.options, demo.layout
        if not layout.sites:
            broker = await stack.enter_async_context(LocalBroker(BrokerConfig()))
            say(f"  broker   Mosquitto at {broker.url} (pid {broker.pid})")
            return cls(demo, None, broker.url)
        plan: dict[str, list[str]] = {site: [] for site in layout.site_names}
        for device, site in demo.device_sites.items():
            plan[site].append(device)
        root = options.run_dir / "brokers"
        shutil.rmtree(root, ignore_errors=True)  # the demo's own: provisioned afresh each run
        sites = await stack.enter_async_context(
            LocalSites(root, plan, prefix=_prefix(options), persistence=False)
        )
        core = sites.core_running
        say(f"  core     Mosquitto at {core.url} (pid {core.pid}); setup in {root}")
        for site, devices in plan.items():
            broker = sites.site_brokers[site]
            say(f"  {site:<8} Mosquitto (pid {broker.pid}), bridged to the core over TLS; "
                f"devices {', '.join(devices)}")  # fmt: skip
        return cls(demo, sites, core.url)

    def follower(self) -> MqttSettings:
        """How the demo reads the core: as the read-only inspector, where there are accounts."""
        if self.sites is not None:
            return self.sites.inspector_mqtt()
        return (self.demo.options.mqtt or MqttSettings()).model_copy(update={"url": self.url})

    def edge_environment(self) -> dict[str, str]:
        env = child_environment(self.url)
        if self.sites is None:
            return env
        return mqtt_environment(env, self.sites.edge_mqtt())

    def device_start(self, device: DeviceLaunch) -> tuple[list[str], dict[str, str]]:
        """A device's arguments and environment: at a site, its generated client config (the
        site's TLS listener, its account) and no broker variables to override it."""
        argv = self.demo.options.device_argv(device)
        env = child_environment(self.url)
        if self.sites is None:
            return argv, env
        site = self.sites.sites[self.sites.site_of(device.device_id)]
        config = site.client_file(device.device_id)
        return [*argv, "--config", str(config)], without_mqtt(env)


def without_mqtt(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the ARES_MQTT__* variables (they would override a config file's)."""
    return {name: value for name, value in env.items() if not name.upper().startswith(MQTT_ENV)}


def mqtt_environment(env: Mapping[str, str], settings: MqttSettings) -> dict[str, str]:
    """``env`` with ``settings``' given values as ARES_MQTT__* variables (and no others)."""
    out = without_mqtt(env)
    for name in sorted(settings.model_fields_set):
        value = getattr(settings, name)
        if value is None:
            continue
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        out[f"{MQTT_ENV}{name.upper()}"] = text
    return out


class _Watch:
    """Follows the run on the core: progress from the coordinator's status, the orders' lines,
    and the processes."""

    def __init__(
        self,
        demo: ClusterDemo,
        link: MqttLink,
        processes: _Processes,
        progress: RoundProgress,
        board: ServingBoard,
        outcome: _Outcome,
    ) -> None:
        self.demo = demo
        self.link = link
        self.processes = processes
        self.progress = progress
        self.board = board
        self.outcome = outcome
        self.replicas: Collection[str] = demo.layout.replicas
        self.deadline = asyncio.get_running_loop().time() + demo.options.timeout_s

    async def until_replicas_up(self) -> int | None:
        """None once every replica said it is up; else the exit status to give up with."""
        while not self.board.up() >= set(self.replicas):
            if self._late():
                return 124
            for replica in self.replicas:
                code = self.processes.poll(replica)
                if code is not None:
                    self.outcome.culprit = replica
                    self.outcome.problem = f"replica {replica} exited (status {code}) at start-up"
                    return code or 1
            await self._step()
        self.progress.note(f"  cluster  {', '.join(sorted(self.replicas, key=natural))} up; "
                           "starting the devices")  # fmt: skip
        return None

    async def until_replicas_exit(self) -> int:
        """Until every replica has exited: 0 if all finished, else the first failure's."""
        running = set(self.replicas)
        failure = 0
        while running:
            if self._late():
                return 124
            for replica in sorted(running):
                code = self.processes.poll(replica)
                if code is None:
                    continue
                running.discard(replica)
                if code and not failure:
                    failure = code
                    self.outcome.culprit = replica
                    self.outcome.problem = f"replica {replica} failed (exit {code})"
                    self.progress.note(f"  warning  {self.outcome.problem}")
            run_dir = self.demo.options.run_dir
            for name in self.processes.failed_devices(self.replicas):
                self.progress.note(f"  warning  {name} exited early; see {run_dir}/{name}.log")
            await self._step()
        return failure

    def _late(self) -> bool:
        if asyncio.get_running_loop().time() <= self.deadline:
            return False
        self.outcome.problem = f"gave up after {self.demo.options.timeout_s:.0f} s"
        return True

    async def _step(self) -> None:
        """Take the next message, or let half a second pass."""
        try:
            async with asyncio.timeout(0.5):
                message = await self.link.receive()
        except TimeoutError:
            self.progress.tick()
            return
        self._take(message)

    def _take(self, message: Message) -> None:
        if message.topic == self.board.topics.edge_status:
            with contextlib.suppress(SchemaError):
                self.progress.show(parse_json(EdgeStatus, message.payload))
            return
        line = self.board.take(message.topic, message.payload)
        if line is not None:
            self.progress.note(f"  {line}")
