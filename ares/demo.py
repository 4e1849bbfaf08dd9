"""``ares demo``: a broker, the edge service and N device agents on one machine.

Every part runs as its own process, exactly as on real hardware; the demo only orchestrates:
it starts the processes, follows the edge's retained status topic to show progress, prints the
per-round table from the edge's report, and stops every process it started, also on Ctrl-C.

:func:`run_once` is one such run, returning the edge's report; ``ares demo`` prints it and
``ares bench`` (:mod:`ares.bench_command`) runs it once per policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

import runtime
from broker import BrokerConfig, LocalBroker
from schemas import EdgeStatus, SchemaError, Topics, parse_json
from schemas.config_file import CONFIG_ENV
from schemas.report import RunReport
from testbed.links import LinkLab, link_mode
from testbed.scenario import DeviceSpec, Scenario, ScheduleSpec
from testbed.schedule import RateSchedule, parse_schedule
from transport import MqttLink, MqttSettings


@dataclass(frozen=True)
class DeviceLaunch:
    device_id: str
    flags: tuple[str, ...]
    spec: DeviceSpec | None = None  # scenario devices: their emulated link


# Edge settings a scenario sets and a flag (or the bench) may override.
EDGE_NAMES = ("policy", "alpha", "split", "model", "dataset", "data_dir", "batch_size",
              "batches_per_round", "lr", "wire_dtype", "seed", "data", "input_shape",
              "classes", "wire_formats", "wire_accuracy_bound", "weight_wire")  # fmt: skip


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
    progress: bool | None = None  # a progress bar: None = when stderr is a terminal
    label: str = ""  # names the run in progress output (the bench: the policy)
    verbose: bool = True  # list every process started
    config: Path | None = None  # the edge's settings file; the devices get what they share with it
    # How the demo follows the edge (its TLS, user, prefix); None: the defaults. The URL is the
    # broker's, set when it is known.
    mqtt: MqttSettings | None = None
    # Where the edge writes the trained model with its early exits, for ares serve; None: nowhere.
    artifact: Path | None = None

    def edge_argv(self, name: str = "edge", report: Path | None = None) -> list[str]:
        """The edge's ``ares`` arguments (the broker's URL comes in ARES_MQTT__URL); ``name``
        and ``report``: one edge replica's, whose checkpoint and report are its own."""
        config = ["--config", str(self.config)] if self.config is not None else []
        artifact = ["--artifact", str(self.artifact)] if self.artifact is not None else []
        return [
            "edge", *config, "--rounds", str(self.rounds), "--min-devices", str(len(self.devices)),
            "--report", str(report or self.report),
            "--checkpoint", str(self.run_dir / f"{name}.ckpt"), *artifact, *self.edge_flags,
        ]  # fmt: skip

    def device_argv(self, device: DeviceLaunch, link: Sequence[str] = ()) -> list[str]:
        """A device's ``ares`` arguments; ``link``: how its link is shaped, where it is."""
        return ["device", "--id", device.device_id, "--exit-on-finish", *device.flags, *link]

    @classmethod
    def for_scenario(
        cls,
        scenario: Scenario,
        *,
        run_dir: Path,
        overrides: Mapping[str, Any] | None = None,
        rounds: int | None = None,
        report: Path | None = None,
        timeout_s: float = 1800.0,
        broker: str | None = None,
        extra_edge_flags: tuple[str, ...] = (),
        progress: bool | None = None,
        label: str = "",
        verbose: bool = True,
    ) -> DemoOptions:
        """One run of ``scenario``; ``overrides`` (EDGE_NAMES, None = unset) win over its values."""
        unknown = set(overrides or {}) - set(EDGE_NAMES)
        if unknown:
            raise ValueError(f"not edge settings a scenario run can override: {sorted(unknown)}")
        edge = {name: getattr(scenario, name, None) for name in EDGE_NAMES}
        edge.update({n: v for n, v in (overrides or {}).items() if v is not None})
        shared = {n: edge.get(n) for n in ("dataset", "data_dir", "seed", "input_shape", "classes")}
        return cls(
            rounds=scenario.rounds if rounds is None else rounds,
            broker=broker,
            run_dir=run_dir,
            report=report or run_dir / "report.json",
            timeout_s=timeout_s,
            edge_flags=(*as_flags(edge), *extra_edge_flags),
            devices=scenario_devices(scenario, shared),
            scenario=scenario,
            progress=progress,
            label=label,
            verbose=verbose,
        )


@dataclass(frozen=True)
class RunResult:
    """How one run ended. ``code``: 0 when the edge finished and wrote its report; 124 when the
    run timed out; 130 when interrupted; else the edge's exit status (1 for a missing report)."""

    code: int
    wall_s: float
    run_dir: Path
    report: dict[str, Any] | None
    problem: str = ""  # what went wrong, for a failed run

    @property
    def ok(self) -> bool:
        return self.code == 0 and self.report is not None


def scenario_devices(scenario: Scenario, shared: dict[str, Any]) -> tuple[DeviceLaunch, ...]:
    launches = []
    for spec in scenario.devices:
        first, count, total = scenario.shards()[spec.id]
        downlink = spec.downlink if spec.downlink is not None else spec.uplink
        values: dict[str, Any] = {
            "shard": f"{first}/{total}",
            "data_share": count,
            "partition": scenario.partition,
            "profile": spec.profile,
            "time_scale": scenario.time_scale,
            "battery_wh": spec.battery_wh,
            "battery_pct": spec.battery_pct if spec.battery_wh else None,
            # Declared like a real board's configured link, so round 1 is planned for it; from
            # then on the device's own measurements take over.
            "uplink_mbps": _starting_rate(spec.uplink, scenario.time_scale),
            "downlink_mbps": _starting_rate(downlink, scenario.time_scale),
            **shared,
            "data": spec.data,
        }
        launches.append(DeviceLaunch(spec.id, as_flags(values), spec))
    return tuple(launches)


def _starting_rate(spec: ScheduleSpec, time_scale: float) -> float:
    """Mbit/s the emulated link carries at the start, on the run's clock."""
    return parse_schedule(spec).scaled(time_scale).rate_at(0.0)


def as_flags(values: dict[str, Any]) -> tuple[str, ...]:
    """``{"data_dir": "d", "seed": None}`` -> ("--data-dir", "d"): unset values are left out."""
    out: list[str] = []
    for name, value in values.items():
        if value is not None:
            text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
            out += [f"--{name.replace('_', '-')}", text]
    return tuple(out)


def run_demo(options: DemoOptions) -> int:
    """``ares demo``: one run, then the per-round table; the exit status."""
    result = run_once(options)
    if result.code == 130:
        print("\nares demo: interrupted; stopped every process", file=sys.stderr)
        return 130
    if not result.ok or result.report is None:
        print(f"ares demo: {result.problem}; see {options.run_dir}/edge.log")
        print(_tail(options.run_dir / "edge.log"), file=sys.stderr)
        return 1
    print_outcome(RunReport.model_validate(result.report), result.wall_s, options)
    return 0


def print_outcome(report: RunReport, wall_s: float, options: DemoOptions) -> None:
    """The per-round table, the final accuracy, and where the report and the model are."""
    print_table(report)
    print(f"final accuracy {report.final_accuracy:.4f}; wall time {wall_s:.1f} s; "
          f"report {options.report}")  # fmt: skip
    if options.artifact is not None and options.artifact.exists():
        print(f"trained model with early exits {options.artifact} (ares serve --artifact ...)")


def run_once(options: DemoOptions) -> RunResult:
    """Start the broker, the edge and the devices, follow the run, stop them all; the result.

    A report left by an earlier run at ``options.report`` is removed first, so a failed run can
    never be mistaken for a finished one.
    """
    logging.getLogger("broker").setLevel(logging.WARNING)  # keep the demo's own output tidy
    logging.getLogger("testbed").setLevel(logging.WARNING)
    options.run_dir.mkdir(parents=True, exist_ok=True)
    options.report.unlink(missing_ok=True)
    say = print if options.verbose else _quiet
    what = f"scenario {options.scenario.name}: " if options.scenario else ""
    say(f"ares demo: {what}{len(options.devices)} devices, {options.rounds} rounds; "
        f"logs in {options.run_dir}")  # fmt: skip
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        lab, link_flags = _links(options, stack, say)
        url = options.broker
        if url is None:
            extra = (lab.host_ip,) if lab else ()
            broker = stack.enter_context(LocalBroker(BrokerConfig(extra_hosts=extra)))
            url = broker.url
            say(f"  broker   Mosquitto at {url} (pid {broker.pid})")
        else:
            say(f"  broker   {url} (external)")
        processes = stack.enter_context(_Processes(options.run_dir, say))
        env = child_environment(url)
        processes.start("edge", options.edge_argv(), env)
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
                options.device_argv(device, link_flags(device)),
                device_env,
                prefix=prefix,
            )
        try:
            edge_code = runtime.run(lambda: _follow(url, processes, options, lab))
        except (KeyboardInterrupt, asyncio.CancelledError):
            return RunResult(130, time.perf_counter() - started, options.run_dir, None,
                             "interrupted")  # fmt: skip
        processes.wait_all(timeout_s=30.0)
    wall = time.perf_counter() - started
    if edge_code != 0:
        problem = (
            f"gave up after {options.timeout_s:.0f} s"
            if edge_code == 124
            else f"the edge service failed (exit {edge_code})"
        )
        return RunResult(edge_code, wall, options.run_dir, None, problem)
    try:
        report = json.loads(options.report.read_text())
    except (OSError, ValueError) as exc:
        return RunResult(1, wall, options.run_dir, None, f"no readable report: {exc}")
    return RunResult(0, wall, options.run_dir, report)


def child_environment(url: str) -> dict[str, str]:
    """The environment of the processes the demo starts: this one's, at the demo's broker.

    Without ARES_CONFIG: the edge is given the demo's file explicitly, and the devices cannot
    read an edge's file. One torch thread each unless the variable says otherwise: they share
    this machine's cores.
    """
    env = {name: value for name, value in os.environ.items() if name.upper() != CONFIG_ENV}
    env["ARES_MQTT__URL"] = url
    env.setdefault("ARES_TORCH_THREADS", "1")
    return env


def _quiet(*args: object, **kwargs: Any) -> None:
    """A ``print`` that prints nothing (a run that is not verbose)."""


Say = Callable[..., None]
LinkFlags = Callable[[DeviceLaunch], tuple[str, ...]]


def _links(
    options: DemoOptions, stack: contextlib.ExitStack, say: Say
) -> tuple[LinkLab | None, LinkFlags]:
    """Shape each scenario device's link: tc in network namespaces when we can, else in-app."""
    if options.scenario is None:
        return None, lambda device: ()
    support = link_mode()
    if support.mode == "tc":
        lab = stack.enter_context(LinkLab())
        say("  links    tc: each device in its own network namespace, veth shaped with tbf")
        return lab, lambda device: ("--link-mode", "tc")
    say(f"  links    token bucket in each agent ({support.reason})")

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
        with RoundProgress(
            options.rounds, options.label, options.progress, len(options.devices)
        ) as progress:
            return await _watch(url, processes, options, progress)
    finally:
        if schedules is not None:
            schedules.cancel()


async def _watch(
    url: str, processes: _Processes, options: DemoOptions, progress: RoundProgress
) -> int:
    settings = (
        MqttSettings(url=url)
        if options.mqtt is None
        else options.mqtt.model_copy(update={"url": url})
    )
    topics = Topics(settings.prefix)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.timeout_s
    link = MqttLink(settings, f"ares-demo-{os.getpid()}", [(topics.edge_status, 1)])
    async with link:
        while (code := processes.poll("edge")) is None:
            if loop.time() > deadline:
                return 124
            for name in processes.failed_devices():
                progress.note(f"  warning  {name} exited early; see {options.run_dir}/{name}.log")
            try:
                async with asyncio.timeout(0.5):
                    message = await link.receive()
            except TimeoutError:
                progress.tick()
                continue
            try:
                status = parse_json(EdgeStatus, message.payload)
            except SchemaError:
                continue
            progress.show(status)
    return code


class RoundProgress:
    """Rounds done out of the total, from the edge's status messages.

    A tqdm bar on stderr when ``enabled`` is True, or None and stderr is a terminal; otherwise
    one plain line per finished round on stdout, so logs and pipes stay readable. ``devices``:
    how many the run starts, for "1 of 3 devices registered".
    """

    def __init__(
        self, total: int, label: str = "", enabled: bool | None = None, devices: int | None = None
    ) -> None:
        self.label = label
        self.devices = devices
        self._seen: tuple[str, int, bool] = ("", -1, False)
        # tqdm's disable=None turns the bar off when its stream is not a terminal.
        self._bar = tqdm(
            total=total,
            desc=label or "rounds",
            unit="round",
            # No rate: the first round's time includes start-up and would mislead.
            bar_format="{desc}: {n_fmt}/{total_fmt} rounds |{bar}| {elapsed}{postfix}",
            file=sys.stderr,
            disable=None if enabled is None else not enabled,
            dynamic_ncols=True,
            leave=True,
        )

    @property
    def bar_shown(self) -> bool:
        return not self._bar.disable

    def __enter__(self) -> RoundProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def show(self, status: EdgeStatus) -> None:
        session, done, _ = self._seen
        if status.session == session and status.rounds_done < done:
            # Fewer rounds than already seen in this session: the edge's last will, written at
            # its start-up and delivered by the broker later. It would only misreport the run.
            return
        online = sum(1 for s in status.devices.values() if s != "offline")
        if self.bar_shown:
            self._seen = (status.session, status.rounds_done, False)
            self._bar.total = status.rounds
            self._bar.n = status.rounds_done
            accuracy = "" if status.accuracy is None else f"  accuracy {status.accuracy:.4f}"
            self._bar.set_postfix_str(f"{status.state}{accuracy}  {online} devices")
            return
        # A new line per round, and one when the edge is done (also after its last round).
        seen = (status.session, status.rounds_done, status.state in ENDED)
        if seen != self._seen:
            self._seen = seen
            print(progress_line(status, self.label, self.devices), flush=True)

    def tick(self) -> None:
        """Redraw (the elapsed time moves on while a long round runs)."""
        if self.bar_shown:
            self._bar.refresh()

    def note(self, line: str) -> None:
        """Print a line without tearing the bar."""
        if self.bar_shown:
            self._bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)


ENDED = ("finished", "stopped")  # the edge's states once it is done


def progress_line(status: EdgeStatus, label: str = "", devices: int | None = None) -> str:
    """One plain line for a status: registration, rounds done with the accuracy, or the end."""
    online = sum(1 for s in status.devices.values() if s != "offline")
    name = f"{label:<8}" if label else "edge    "
    if status.state in ENDED:
        return f"  {name} {_ending(status, online)}"
    if not status.rounds_done:
        of = f" of {devices}" if devices is not None else ""
        return f"  {name} {status.state}: {online}{of} devices registered"
    bar = "#" * status.rounds_done + "." * max(status.rounds - status.rounds_done, 0)
    prefix = f"{label} " if label else ""
    return (
        f"  {prefix}[{bar}] round {status.rounds_done}/{status.rounds}  "
        f"accuracy {status.accuracy or 0:.4f}  loss {status.loss or 0:.4f}  {online} devices"
    )


def _ending(status: EdgeStatus, online: int) -> str:
    """How the edge ended: before round 1, or after some rounds with that many devices."""
    if not status.rounds_done:
        return f"{status.state} before round 1: {online} devices registered"
    trained = len(status.last_round) or online  # the devices of the last round, where known
    accuracy = "" if status.accuracy is None else f", accuracy {status.accuracy:.4f}"
    return (
        f"{status.state}: {status.rounds_done} of {status.rounds} rounds, "
        f"{trained} devices trained{accuracy}"
    )


def print_table(report: RunReport) -> None:
    device_ids = sorted({d for r in report.rounds for d in r.devices})
    header = f"{'round':>5} {'accuracy':>9} {'loss':>8} {'time s':>8}    cuts " + " ".join(
        device_ids
    )
    print(header)
    print("-" * len(header))
    for r in report.rounds:
        cuts = " ".join(
            f"{r.devices[d].cut if d in r.devices else '-':>{len(d)}}" for d in device_ids
        )
        print(f"{r.round:>5} {r.accuracy:>9.4f} {r.loss:>8.4f} {r.duration_s:>8.2f}"
              f"         {cuts}")  # fmt: skip


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Processes:
    """Child processes of the demo; all of them are stopped on exit, whatever happened."""

    def __init__(self, run_dir: Path, say: Say = print) -> None:
        self.run_dir = run_dir
        self._say = say
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
        self._say(f"  {name:<8} pid {self._procs[name].pid}")

    def poll(self, name: str) -> int | None:
        return self._procs[name].poll()

    def failed_devices(self, services: Collection[str] = ("edge",)) -> Iterator[str]:
        """Each process not among ``services`` that failed since the last call."""
        for name, proc in self._procs.items():
            code = proc.poll()
            if name not in services and code not in (None, 0) and name not in self._reported:
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
