"""``ares demo``: a broker, the edge service and N device agents on one machine.

Every part runs as its own process, exactly as on real hardware; the demo only orchestrates:
it starts the processes, follows the edge's retained status topic to show progress, prints the
per-round table from the edge's report, and stops every process it started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ares import runtime
from broker import BrokerConfig, LocalBroker
from broker.link import MqttLink, MqttSettings
from schemas import EdgeStatus, SchemaError, Topics, parse_json
from testbed.links import LinkLab, link_mode
from testbed.scenario import DeviceSpec, Scenario, ScheduleSpec, load_scenario
from testbed.schedule import RateSchedule, parse_schedule


@dataclass(frozen=True)
class DeviceLaunch:
    device_id: str
    flags: tuple[str, ...]
    spec: DeviceSpec | None = None  # scenario devices: their emulated link


@dataclass(frozen=True)
class DemoOptions:
    rounds: int
    broker: str | None
    run_dir: Path
    report: Path
    timeout_s: float
    edge_flags: tuple[str, ...]
    devices: tuple[DeviceLaunch, ...]
    scenario: Scenario | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoOptions:
        run_dir = args.run_dir or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
        scenario = load_scenario(args.scenario) if args.scenario else None
        # Flags given on the command line win over the scenario's values.
        edge_names = ("policy", "alpha", "split", "model", "dataset", "data_dir", "batch_size",
                      "batches_per_round", "lr", "wire_dtype", "seed")  # fmt: skip
        edge = {name: getattr(scenario, name, None) for name in edge_names} if scenario else {}
        edge.update({n: getattr(args, n) for n in edge_names if getattr(args, n) is not None})
        rounds = args.rounds or (scenario.rounds if scenario else 10)
        shared = {n: edge.get(n) for n in ("dataset", "data_dir", "seed")}
        if scenario is not None:
            devices = scenario_devices(scenario, shared)
        else:
            if args.devices < 1:
                raise SystemExit("ares demo: --devices must be at least 1")
            devices = tuple(
                DeviceLaunch(f"dev-{i}", _flags({"shard": f"{i}/{args.devices}",
                                                 "partition": args.partition, **shared}))
                for i in range(args.devices)
            )  # fmt: skip
        return cls(
            rounds=rounds,
            broker=args.broker,
            run_dir=run_dir,
            report=args.report or run_dir / "report.json",
            timeout_s=args.timeout,
            edge_flags=_flags(edge),
            devices=devices,
            scenario=scenario,
        )


def scenario_devices(scenario: Scenario, shared: dict[str, Any]) -> tuple[DeviceLaunch, ...]:
    launches = []
    for spec in scenario.devices:
        first, count, total = scenario.shards()[spec.id]
        values: dict[str, Any] = {
            "shard": f"{first}/{total}",
            "data_share": count,
            "partition": scenario.partition,
            "profile": spec.profile,
            "time_scale": scenario.time_scale,
            "battery_wh": spec.battery_wh,
            "battery_pct": spec.battery_pct if spec.battery_wh else None,
            **shared,
        }
        launches.append(DeviceLaunch(spec.id, _flags(values), spec))
    return tuple(launches)


def _flags(values: dict[str, Any]) -> tuple[str, ...]:
    out: list[str] = []
    for name, value in values.items():
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return tuple(out)


def run_demo(options: DemoOptions) -> int:
    logging.getLogger("broker").setLevel(logging.WARNING)  # keep the demo's own output tidy
    logging.getLogger("testbed").setLevel(logging.WARNING)
    options.run_dir.mkdir(parents=True, exist_ok=True)
    what = f"scenario {options.scenario.name}: " if options.scenario else ""
    print(f"ares demo: {what}{len(options.devices)} devices, {options.rounds} rounds; "
          f"logs in {options.run_dir}")  # fmt: skip
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        lab, link_flags = _links(options, stack)
        url = options.broker
        if url is None:
            extra = (lab.host_ip,) if lab else ()
            broker = stack.enter_context(LocalBroker(BrokerConfig(extra_hosts=extra)))
            url = broker.url
            print(f"  broker   Mosquitto at {url} (pid {broker.pid})")
        else:
            print(f"  broker   {url} (external)")
        processes = stack.enter_context(_Processes(options.run_dir))
        env = {**os.environ, "ARES_MQTT__URL": url, "ARES_TORCH_THREADS": "1"}
        processes.start(
            "edge",
            ["edge", "--rounds", str(options.rounds), "--min-devices", str(len(options.devices)),
             "--report", str(options.report), "--checkpoint", str(options.run_dir / "edge.ckpt"),
             *options.edge_flags],
            env,
        )  # fmt: skip
        for device in options.devices:
            prefix, device_env = [], env
            if lab is not None and device.spec is not None:
                link = lab.add_device(
                    device.device_id,
                    uplink=_schedule(device.spec.uplink, options),
                    downlink=_schedule(device.spec.downlink or device.spec.uplink, options),
                    delay_ms=device.spec.delay_ms,
                    loss_pct=device.spec.loss_pct,
                )
                prefix = link.exec_prefix()
                port = url.rsplit(":", 1)[1]
                device_env = {**env, "ARES_MQTT__URL": f"mqtt://{lab.host_ip}:{port}"}
            processes.start(
                device.device_id,
                ["device", "--id", device.device_id, "--exit-on-finish", *device.flags,
                 *link_flags(device)],
                device_env,
                prefix=prefix,
            )  # fmt: skip
        try:
            edge_code = runtime.run(lambda: _follow(url, processes, options, lab))
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("\nares demo: interrupted; stopping every process", file=sys.stderr)
            return 130
        processes.wait_all(timeout_s=30.0)
    wall = time.perf_counter() - started
    if edge_code != 0:
        print(
            f"ares demo: the edge service failed (exit {edge_code}); see {options.run_dir}/edge.log"
        )
        print(_tail(options.run_dir / "edge.log"), file=sys.stderr)
        return 1
    report = json.loads(options.report.read_text())
    print_table(report)
    print(f"final accuracy {report['final_accuracy']:.4f}; wall time {wall:.1f} s; "
          f"report {options.report}")  # fmt: skip
    return 0


LinkFlags = Callable[[DeviceLaunch], tuple[str, ...]]


def _links(options: DemoOptions, stack: contextlib.ExitStack) -> tuple[LinkLab | None, LinkFlags]:
    """Shape each scenario device's link: tc in network namespaces when we can, else in-app."""
    if options.scenario is None:
        return None, lambda device: ()
    support = link_mode()
    if support.mode == "tc":
        lab = stack.enter_context(LinkLab())
        print("  links    tc: each device in its own network namespace, veth shaped with tbf")
        return lab, lambda device: ("--link-mode", "tc")
    print(f"  links    token bucket in each agent ({support.reason})")

    def token_bucket(device: DeviceLaunch) -> tuple[str, ...]:
        if device.spec is None:
            return ()
        downlink = device.spec.downlink if device.spec.downlink is not None else device.spec.uplink
        return (
            "--link-mode", "token-bucket",
            "--uplink", json.dumps(device.spec.uplink),
            "--downlink", json.dumps(downlink),
        )  # fmt: skip

    return None, token_bucket


def _schedule(spec: ScheduleSpec, options: DemoOptions) -> RateSchedule:
    time_scale = options.scenario.time_scale if options.scenario else 1.0
    return parse_schedule(spec).scaled(time_scale)


async def _follow(
    url: str, processes: _Processes, options: DemoOptions, lab: LinkLab | None
) -> int:
    """Show progress from the edge's status topic until the edge process exits.

    Meanwhile the link lab (if any) changes link rates along the scenario's schedules.
    """
    schedules = asyncio.create_task(lab.run_schedules()) if lab is not None else None
    try:
        return await _watch(url, processes, options)
    finally:
        if schedules is not None:
            schedules.cancel()


async def _watch(url: str, processes: _Processes, options: DemoOptions) -> int:
    topics = Topics()
    settings = MqttSettings(url=url)
    seen: tuple[str, int] = ("", -1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.timeout_s
    link = MqttLink(settings, f"ares-demo-{os.getpid()}", [(topics.edge_status, 1)])
    async with link:
        while (code := processes.poll("edge")) is None:
            if loop.time() > deadline:
                print(f"ares demo: gave up after {options.timeout_s:.0f} s", file=sys.stderr)
                return 124
            for name in processes.failed_devices():
                print(f"  warning  {name} exited early; see {options.run_dir}/{name}.log")
            try:
                async with asyncio.timeout(0.5):
                    message = await link.receive()
            except TimeoutError:
                continue
            try:
                status = parse_json(EdgeStatus, message.payload)
            except SchemaError:
                continue
            if status.session != seen[0] or status.rounds_done != seen[1]:
                seen = (status.session, status.rounds_done)
                print(_progress(status), flush=True)
    return code


def _progress(status: EdgeStatus) -> str:
    online = sum(1 for s in status.devices.values() if s != "offline")
    if not status.rounds_done:
        return f"  edge     {status.state}: {online} of the devices registered"
    bar = "#" * status.rounds_done + "." * (status.rounds - status.rounds_done)
    return (
        f"  [{bar}] round {status.rounds_done}/{status.rounds}  "
        f"accuracy {status.accuracy or 0:.4f}  loss {status.loss or 0:.4f}  {online} devices"
    )


def print_table(report: dict[str, Any]) -> None:
    device_ids = sorted({d for r in report["rounds"] for d in r["devices"]})
    header = f"{'round':>5} {'accuracy':>9} {'loss':>8} {'time s':>8}  splits " + " ".join(
        device_ids
    )
    print(header)
    print("-" * len(header))
    for r in report["rounds"]:
        splits = " ".join(
            f"{r['devices'][d]['split'] if d in r['devices'] else '-':>{len(d)}}"
            for d in device_ids
        )
        print(f"{r['round']:>5} {r['accuracy']:>9.4f} {r['loss']:>8.4f} {r['duration_s']:>8.2f}"
              f"         {splits}")  # fmt: skip


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Processes:
    """Child processes of the demo; all of them are stopped on exit, whatever happened."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self._reported: set[str] = set()

    def __enter__(self) -> _Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self, name: str, args: list[str], env: dict[str, str], prefix: Sequence[str] = ()
    ) -> None:
        log_file = open(self.run_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop_all
        self._logs.append(log_file)
        self._procs[name] = subprocess.Popen(
            [*prefix, sys.executable, "-m", "ares", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            # Own process group: a terminal's Ctrl-C reaches only the demo, which stops them.
            start_new_session=True,
        )
        print(f"  {name:<8} pid {self._procs[name].pid}")

    def poll(self, name: str) -> int | None:
        return self._procs[name].poll()

    def failed_devices(self) -> Iterator[str]:
        for name, proc in self._procs.items():
            code = proc.poll()
            if name != "edge" and code not in (None, 0) and name not in self._reported:
                self._reported.add(name)
                yield name

    def wait_all(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))

    def stop_all(self) -> None:
        running = [p for p in self._procs.values() if p.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log_file in self._logs:
            log_file.close()
