"""Peak memory of a device agent per model: one real ``ares device`` process training it.

Per model, on a private Mosquitto: ``ares edge`` (policy sl at a cut, or fl: the whole model
on the device) and one ``ares device`` with its own data, a ``.npz`` written for the model
(images 3 x 32 x 32 in 10 classes; series windows 3 x 128 in 6 classes for a model that takes
series, such as cnn1d; 1 x 8 x 8 for tiny), the edge evaluating on a held-out ``.npz`` of the
same shape. Both use one torch thread; ``--rounds`` rounds of ``--batches`` batches of
``--batch-size`` (20, the paper's bench batch). Measured: the device process's peak resident
set (the kernel's VmHWM, read from ``/proc/<pid>/status`` once the edge is done and before the
device is stopped), against the baseline: a Python process that imported torch and the device
agent and paid torch's one-time warm-up (the lazy imports of a first optimiser step, which the
agent pays before its first round), and did nothing else. ``import torch`` and that warm-up
are most of it; what a run adds above it is the model, its training and the agent's work.

A device times every block of the whole model when it first meets it (the edge plans with the
timings), unless its profile cache holds them. So each model runs first at ``--cold-cut`` with
an empty cache (a device's first start), then at each of ``--cuts`` with the cache warm (every
later start): ``mid`` is the middle cut (the sl policy's default), ``fl`` the last (federated
learning: the whole model, its optimiser state and all its activations on the device).

    python benchmarks/bench_device_memory.py [--models small_cnn,vgg5,...] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from benchutil import machine_info, print_machine, print_table, write_json

from broker import LocalBroker
from splitnn.model_registry import model_entry
from splitnn.models import ModelSpec, build_model, num_blocks

MODELS = ("small_cnn", "vgg5", "mobilenetv2", "resnet18", "cnn1d")
DEVICE_ID = "dev-0"
RUN_TIMEOUT_S = 300.0
POLL_S = 0.05
MIB = 2**20
# The baseline process: what `ares device` has imported before it does anything, its memory,
# then torch's one-time warm-up (as the agent does it), its memory again.
BASELINE_CODE = """
import torch, ares.cli, device_agent.agent, device_agent.host
from splitnn.tensors import warm_up_torch
print(open("/proc/self/status").read())
print("WARM-UP")
warm_up_torch()
print(open("/proc/self/status").read())
"""


@dataclass(frozen=True)
class Config:
    models: tuple[str, ...]
    cuts: tuple[str, ...]  # measured with a warm profile cache: "mid", "fl" or a number
    cold_cut: str | None  # measured first, with an empty profile cache; None: not at all
    rounds: int
    batches: int
    batch_size: int
    samples: int  # the device's own data
    eval_samples: int  # the edge's held-out set


@dataclass(frozen=True)
class Memory:
    """One process's resident memory from /proc/<pid>/status, MiB."""

    rss_mib: float  # VmRSS: now
    peak_mib: float  # VmHWM: the most it ever held


def read_memory(status_text: str) -> Memory:
    """Parse VmRSS and VmHWM (kB) out of a /proc/<pid>/status text."""
    values: dict[str, float] = {}
    for line in status_text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    if set(values) != {"VmRSS", "VmHWM"}:
        raise ValueError("no VmRSS/VmHWM in the status (the process has exited)")
    return Memory(rss_mib=values["VmRSS"], peak_mib=values["VmHWM"])


def process_memory(pid: int) -> Memory:
    return read_memory(Path(f"/proc/{pid}/status").read_text())


def data_shape(model: str) -> tuple[tuple[int, ...], int]:
    """The sample shape and class count the benchmark gives ``model``, by the input rank it
    takes: 2 is series (C x T), 3 images (C x H x W), any (tiny) an 8 x 8 digit."""
    rank = model_entry(model).input_rank
    if rank == 2:
        return (3, 128), 6
    if rank == 3:
        return (3, 32, 32), 10
    return (1, 8, 8), 10


def synthetic_arrays(
    shape: tuple[int, ...], classes: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``size`` float32 samples of ``shape``: a random template per class under unit noise,
    every class present; labels int64. Learnable, but only the shapes matter here."""
    if size < classes:
        raise ValueError(f"{size} samples cannot hold all {classes} classes")
    templates = np.random.default_rng((seed, 0)).normal(size=(classes, *shape))
    rng = np.random.default_rng((seed, 1))
    y = rng.permutation(np.arange(size) % classes).astype(np.int64)
    x = templates[y] + rng.normal(size=(size, *shape))
    return x.astype(np.float32), y


def resolve_cut(cut: str, blocks: int) -> int:
    """``mid`` (the middle cut, as the sl policy's default), ``fl`` (the last) or a number."""
    if cut == "mid":
        return max(1, blocks // 2)
    if cut == "fl":
        return blocks
    value = int(cut)
    if not 1 <= value <= blocks:
        raise ValueError(f"cut {value} is outside 1..{blocks}")
    return value


def clean_env(**extra: str) -> dict[str, str]:
    # A user's ARES_* settings must not change what the benchmark measures.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARES_")}
    return {**env, **extra}


@dataclass(frozen=True)
class Baseline:
    imported: Memory  # torch and the device agent imported
    warmed_up: Memory  # and torch's one-time warm-up done: what a run is measured against


def baseline() -> Baseline:
    """A Python process that imported torch and the device agent, then warmed torch up."""
    done = subprocess.run(
        [sys.executable, "-c", BASELINE_CODE], capture_output=True, text=True, timeout=120,
        check=True, env=clean_env(),
    )  # fmt: skip
    imported, warmed_up = done.stdout.split("WARM-UP")
    return Baseline(read_memory(imported), read_memory(warmed_up))


class MemoryRun:
    """One model at one cut: broker, edge, device; the device's memory."""

    def __init__(
        self, config: Config, model: str, cut: int, workdir: Path, cache: Path, data: Path
    ) -> None:
        self.config = config
        self.model = model
        self.cut = cut
        self.workdir = workdir
        self.cache = cache
        self.data = data

    def execute(self) -> dict[str, Any]:
        blocks = num_blocks(_spec(self.model))
        fl = self.cut == blocks
        policy = ["--policy", "fl"] if fl else ["--policy", "sl", "--split", str(self.cut)]
        c = self.config
        began = time.monotonic()
        with LocalBroker() as broker:
            edge = self._spawn("edge", [
                "edge", "--broker", broker.url, "--model", self.model, *policy,
                "--data", str(self.data / "held-out.npz"), "--rounds", str(c.rounds),
                "--batches-per-round", str(c.batches), "--batch-size", str(c.batch_size),
                "--min-devices", "1", "--torch-threads", "1", "--fresh",
                "--checkpoint", str(self.workdir / "edge.ckpt"),
                "--report", str(self.workdir / "report.json"),
            ], clean_env())  # fmt: skip
            device = self._spawn("device", [
                "device", "--broker", broker.url, "--id", DEVICE_ID,
                "--data", str(self.data / "train.npz"), "--torch-threads", "1",
            ], clean_env(ARES_PROFILE_CACHE_DIR=str(self.cache)))  # fmt: skip
            try:
                memory = self._until_edge_done(edge, device, began + RUN_TIMEOUT_S)
            finally:
                for process in (device, edge):
                    _stop(process)
        return {**self._check_report(), "peak_rss_mib": memory.peak_mib,
                "rss_at_end_mib": memory.rss_mib, "wall_s": time.monotonic() - began}  # fmt: skip

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "ares", *args], stdout=log, stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip

    def _until_edge_done(
        self, edge: subprocess.Popen[bytes], device: subprocess.Popen[bytes], deadline: float
    ) -> Memory:
        """Wait for the edge to finish its rounds; the device's memory then (it stays up:
        without --exit-on-finish it waits for the next session, so nothing races its exit)."""
        while edge.poll() is None:
            if device.poll() is not None:
                raise RuntimeError(f"the device exited ({device.returncode})\n{self._tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no result within {RUN_TIMEOUT_S:.0f} s\n{self._tail()}")
            time.sleep(POLL_S)
        if edge.returncode != 0:
            raise RuntimeError(f"the edge failed ({edge.returncode})\n{self._tail()}")
        if device.poll() is not None:
            raise RuntimeError(f"the device exited ({device.returncode})\n{self._tail()}")
        return process_memory(device.pid)

    def _check_report(self) -> dict[str, Any]:
        """The device trained every round at the cut asked for, every batch."""
        report = json.loads((self.workdir / "report.json").read_text())
        rounds = [r["devices"].get(DEVICE_ID) for r in report["rounds"]]
        c = self.config
        if len(rounds) != c.rounds or any(
            d is None or d["status"] != "ok" or d["cut"] != self.cut or d["batches"] != c.batches
            for d in rounds
        ):
            raise RuntimeError(f"the device did not train as asked: {rounds}\n{self._tail()}")
        return {"batches": sum(d["batches"] for d in rounds if d is not None)}

    def _tail(self) -> str:
        return "\n".join(
            f"--- {name}.log\n" + (self.workdir / f"{name}.log").read_text()[-2000:]
            for name in ("edge", "device")
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _spec(model: str) -> ModelSpec:
    shape, classes = data_shape(model)
    return ModelSpec(model, shape, classes)


def model_facts(model: str) -> dict[str, Any]:
    spec = _spec(model)
    built = build_model(spec)
    return {
        "input_shape": list(spec.input_shape),
        "classes": spec.num_classes,
        "blocks": num_blocks(spec),
        "block_params": [sum(p.numel() for p in block.parameters()) for block in built],
    }


def write_data(model: str, folder: Path, config: Config) -> None:
    """The device's own data and the edge's held-out set, shaped for ``model``."""
    shape, classes = data_shape(model)
    folder.mkdir(parents=True, exist_ok=True)
    sets = (("train", config.samples, 1), ("held-out", config.eval_samples, 2))
    for name, size, split_seed in sets:
        x, y = synthetic_arrays(shape, classes, size, seed=split_seed)
        np.savez(folder / f"{name}.npz", x=x, y=y)


def run_model(config: Config, model: str, root: Path) -> list[dict[str, Any]]:
    facts = model_facts(model)
    blocks = facts["blocks"]
    data, cache = root / "data", root / "profile-cache"
    write_data(model, data, config)
    plan = [(config.cold_cut, True)] if config.cold_cut is not None else []
    plan += [(cut, False) for cut in config.cuts]
    results = []
    for index, (name, cold) in enumerate(plan):
        cut = resolve_cut(name, blocks)
        workdir = root / f"run-{index}-cut-{cut}"
        workdir.mkdir(parents=True)
        print(f"  {model}: cut {cut} of {blocks}, profile cache "
              f"{'empty' if cold else 'warm'} ...", flush=True)  # fmt: skip
        result = MemoryRun(config, model, cut, workdir, cache, data).execute()
        results.append({
            "model": model, "blocks": blocks, "params": sum(facts["block_params"]),
            "cut": cut, "device_params": sum(facts["block_params"][:cut]),
            "profiled": cold, "input_shape": facts["input_shape"], "classes": facts["classes"],
            **result,
        })  # fmt: skip
    return results


def print_results(config: Config, base: Baseline, results: list[dict[str, Any]]) -> None:
    floor = base.warmed_up.rss_mib
    print(
        f"\ndevice agent memory: batch {config.batch_size}, {config.rounds} round(s) x "
        f"{config.batches} batches, {config.samples} samples of own data, 1 torch thread\n"
        f"baseline: Python with torch and the agent imported {base.imported.rss_mib:.0f} MiB; "
        f"after torch's one-time warm-up {floor:.0f} MiB"
    )
    rows = []
    for r in results:
        rows.append((
            r["model"], r["blocks"], f"{r['params'] / 1e6:.2f}M",
            f"{r['cut']}{' (fl)' if r['cut'] == r['blocks'] else ''}",
            f"{r['device_params'] / 1e6:.2f}M",
            "first start" if r["profiled"] else "cached",
            f"{r['peak_rss_mib']:.0f}", f"{r['peak_rss_mib'] - floor:.0f}",
        ))  # fmt: skip
    print_table(
        ["model", "blocks", "params", "cut", "device params", "block timings", "peak RSS MiB",
         "above baseline MiB"],
        rows,
    )  # fmt: skip
    print(
        "  block timings: first start, the device timed every block of the whole model (an "
        "empty profile cache);\n  cached: read from its profile cache. Peak: the device "
        "process's VmHWM over the whole run; above baseline:\n  above the warmed-up baseline."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(MODELS), help="comma separated")
    parser.add_argument("--cuts", default="mid,fl", help="with a warm profile cache")
    parser.add_argument(
        "--cold-cut", default="mid", help="first, with an empty profile cache ('none': skip)"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batches", type=int, default=5, help="batches per round")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--samples", type=int, default=200, help="the device's own data")
    parser.add_argument("--eval-samples", type=int, default=100, help="the edge's held-out set")
    parser.add_argument("--quick", action="store_true", help="tiny only: a smoke test")
    parser.add_argument("--keep", type=Path, help="keep the runs' logs and reports here")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    config = Config(
        models=("tiny",) if args.quick else tuple(m for m in args.models.split(",") if m),
        cuts=("fl",) if args.quick else tuple(c for c in args.cuts.split(",") if c),
        cold_cut=None if args.cold_cut == "none" else args.cold_cut,
        rounds=args.rounds,
        batches=2 if args.quick else args.batches,
        batch_size=args.batch_size,
        samples=args.samples,
        eval_samples=args.eval_samples,
    )
    for model in config.models:  # fail before any run, not after minutes
        blocks = num_blocks(_spec(model))
        for cut in (*config.cuts, *([config.cold_cut] if config.cold_cut else [])):
            try:
                resolve_cut(cut, blocks)
            except ValueError as exc:
                parser.error(f"{model}: {exc}")
    info = machine_info()
    print_machine(info)
    base = baseline()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as temp:
        root = args.keep or Path(temp)
        for model in config.models:
            results += run_model(config, model, root / model)
    print_results(config, base, results)
    print(f"load average now {os.getloadavg()[0]:.2f} (was {info['load_average_1m']})")
    if args.json:
        numbers = {"machine": info, "config": asdict(config), "baseline": asdict(base),
                   "results": results}  # fmt: skip
        write_json(args.json, numbers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
