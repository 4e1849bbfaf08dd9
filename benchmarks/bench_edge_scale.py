"""Edge scale benchmark: one real edge service against 100, 200 and 500 light emulated devices.

Per device count, on a private Mosquitto: the edge (benchmarks/scale_edge.py: EdgeService as
``ares edge`` runs it, in its own process, its loop lag filed by phase) and the light devices
(benchmarks/scale_devices.py: the agent's protocol session, many MQTT clients per process, no
torch work, a think time per batch standing in for the board's compute) train ``--rounds`` rounds of
``--batches`` batches of the ``tiny`` model at cut ``--split``. Measured:

* batches per second served by the edge over the training phase (registration done -> last
  round recorded, round boundaries included), against the offered load (devices / think time);
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

    python benchmarks/bench_edge_scale.py [--devices 100,200,500] [--quick] [--json OUT]
    python benchmarks/bench_edge_scale.py --models vgg5,mobilenetv2,resnet18 --dataset synthetic \
        --split 1 --devices 20 --think-s 0.2 --batch-size 20 --batch-timeout-s 60 --rounds 2 \
        --batches 5 [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
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

from broker import BrokerConfig, LocalBroker
from planner.policies import POLICIES
from splitnn.datasets import load_dataset
from splitnn.models import ModelSpec, build_model, cut_shapes, num_blocks

HERE = Path(__file__).parent
TARGET_DEVICES = 200
TARGET_P99_S = 0.020
START_TIMEOUT_S = 300.0  # the edge imports torch, loads data, profiles itself
MODELS_EVAL_SAMPLES = 200  # the edge's held-out set per model run, unless --eval-samples


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


@dataclass
class CpuMark:
    """CPU seconds of Mosquitto and of the whole machine at one moment. (The edge and the
    device processes, which exit at the end, measure their own.)"""

    at: float
    broker: float
    machine_busy: float  # all cores, seconds


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def mark(broker: int) -> CpuMark:
    return CpuMark(at=time.monotonic(), broker=cpu_seconds(broker), machine_busy=machine_cpu()[0])


class Run:
    """One device count: broker, edge, device processes; their numbers."""

    def __init__(self, config: Config, devices: int, workdir: Path) -> None:
        self.config = config
        self.devices = devices
        self.workdir = workdir
        self.spec = _spec(config)
        self.held_out: Path | None = None
        self.events: dict[str, float] = {}
        self.marks: dict[str, CpuMark] = {}
        self._logs: list[IO[bytes]] = []

    async def execute(self) -> dict[str, Any]:
        if self.config.eval_samples is not None:
            self.held_out = self.workdir / "held-out.npz"
            write_held_out(self.config, self.held_out)
        config = BrokerConfig(log_types=("error", "warning"), max_queued_messages=10_000)
        async with LocalBroker(config) as broker:
            assert broker.pid is not None
            probe = await self._spawn("probe", self._probe_command())
            edge = await self._spawn("edge", self._edge_command(broker.url))
            try:
                await self._until_event(edge, "started", START_TIMEOUT_S)
                fleets = [
                    await self._spawn(f"devices-{first}", self._fleet_command(broker.url, first))
                    for first in range(0, self.devices, self.config.per_process)
                ]
                try:
                    await self._follow(edge, broker.pid)
                    await self._wait_all(fleets, 120.0)
                finally:
                    for process in fleets:
                        await _stop(process)
            finally:
                await _stop(edge)
                await _stop(probe)
                for log in self._logs:
                    log.close()
            if edge.returncode != 0:
                tail = (self.workdir / "edge.log").read_text()[-3000:]
                raise RuntimeError(f"the edge failed (exit {edge.returncode}):\n{tail}")
        return self._results()

    # --- processes ----------------------------------------------------------------------------

    def _edge_command(self, url: str) -> list[str]:
        c = self.config
        command = [
            sys.executable, str(HERE / "scale_edge.py"), "--broker", url,
            "--devices", str(self.devices), "--rounds", str(c.rounds),
            "--batches", str(c.batches), "--batch-size", str(c.batch_size),
            "--model", c.model, "--dataset", c.dataset, "--policy", c.policy,
            "--split", str(c.split), "--batch-timeout-s", str(c.batch_timeout_s),
            "--compute-workers", str(c.compute_workers),
            "--deadline-floor-s", str(self._round_floor_s()),
            "--workdir", str(self.workdir), "--out", str(self.workdir / "edge.json"),
        ]  # fmt: skip
        if self.held_out is not None:
            command += ["--data", str(self.held_out)]
        if c.cprofile:
            command += ["--cprofile", str(self.workdir / "edge.prof")]
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

    def _fleet_command(self, url: str, first: int) -> list[str]:
        c = self.config
        spec = self.spec
        count = min(c.per_process, self.devices - first)
        return [
            sys.executable, str(HERE / "scale_devices.py"), "--broker", url,
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

    async def _until_event(
        self, edge: asyncio.subprocess.Process, wanted: str, timeout_s: float
    ) -> None:
        assert edge.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                line = (await edge.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"the edge exited before {wanted!r}; see edge.log")
                parts = line.split()
                if len(parts) == 3 and parts[0] == "EVENT":
                    self.events[parts[1]] = float(parts[2])
                    if parts[1] == wanted:
                        return

    async def _follow(self, edge: asyncio.subprocess.Process, broker: int) -> None:
        """Mark CPU counters when training starts and ends; wait for the edge to finish."""
        c = self.config
        round_s = c.batches * (c.think_s * (1 + c.jitter) + c.batch_timeout_s)
        budget = START_TIMEOUT_S + c.rounds * (round_s + 60)
        async with asyncio.timeout(budget):
            await self._until_event(edge, "training", budget)
            self.marks["training"] = mark(broker)
            await self._until_event(edge, "finishing", budget)
            self.marks["finishing"] = mark(broker)
            await self._until_event(edge, "done", budget)
            await edge.wait()

    @staticmethod
    async def _wait_all(processes: list[asyncio.subprocess.Process], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            for process in processes:
                await process.wait()

    # --- numbers ------------------------------------------------------------------------------

    def _results(self) -> dict[str, Any]:
        edge = json.loads((self.workdir / "edge.json").read_text())
        report = json.loads((self.workdir / "report.json").read_text())
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

        return {
            "model": self.config.model,
            "cut": self.config.split,
            "devices": self.devices,
            "device_processes": len(fleets),
            "rounds_completed": len(report["rounds"]),
            "rounds_all_ok": sum(
                all(d["status"] == "ok" for d in r["devices"].values()) for r in report["rounds"]
            ),
            "training_wall_s": wall,
            "batches": batches,
            "batches_per_s": batches / wall,
            "offered_batches_per_s": self.devices / self.config.think_s,
            "serving": serving_numbers(report),
            "edge_peak_rss_mib": edge.get("peak_rss_mib"),
            "round_durations_s": [r["duration_s"] for r in report["rounds"]],
            "lag_training": edge["phases"]["training"],
            "lag_idle_probe": {
                **summary(probe),
                "over_threshold": sum(1 for lag in probe if lag > TARGET_P99_S),
            },
            "lag_registration": edge["phases"]["registration"],
            "lag_rounds": edge["rounds"],
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
                "edge": edge["phases"]["training"]["cpu_share"],
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


async def run_all(config: Config, keep: Path | None) -> list[dict[str, Any]]:
    results = []
    for model in config.models or (config.model,):
        run_config = dataclasses.replace(config, model=model)
        for devices in config.devices:
            print(f"running {model}, {devices} devices ...", flush=True)
            with contextlib.ExitStack() as stack:
                if keep is None:
                    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                else:
                    name = f"devices-{devices}"
                    workdir = keep / (f"{model}-{name}" if config.models else name)
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
    parser.add_argument("--keep", type=Path, help="keep logs, reports and profiles here")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    models = tuple(m for m in (args.models or "").split(",") if m)
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
    else:
        print_results(config, results)
    print(f"load average now {os.getloadavg()[0]:.2f} (was {info['load_average_1m']})")
    if args.json:
        write_json(args.json, {"machine": info, "config": asdict(config), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
