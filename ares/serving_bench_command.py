"""``ares bench --task inference``: its flags, and the demo's machinery to run each serving
policy with (a Mosquitto, ``ares serve``, one ``ares device --serve`` per scenario device with
its emulated board, link and battery) and to train the scenario's model once.

The bench itself is :mod:`experiments.inference`; ``ares bench`` (:mod:`ares.bench_command`)
hands over here when ``--task inference`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

# The demo's process handling, shared rather than copied (private there: the demo is its only
# other user).
from ares.demo import DemoOptions, RunResult, _Processes, _quiet, child_environment, run_once
from broker import BrokerConfig, LocalBroker
from experiments.inference.launch import ServingRun, TrainingRun
from experiments.inference.options import (
    QUICK_BATCHES,
    QUICK_ROUNDS,
    SERVING_BENCH_POLICIES,
    InferenceOptions,
)
from testbed.scenario import DeviceSpec

__all__ = ["add_inference_flags", "launch_serving", "run_inference_bench", "train_model"]

TASKS = ("train", "inference")


def add_inference_flags(parser: argparse.ArgumentParser) -> None:
    """``--task`` and what ``--task inference`` takes besides the bench's common flags."""
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="train",
        help="train: compare training policies (the default); inference: serve a trained "
        "model with every serving policy under a fixed request rate",
    )
    group = parser.add_argument_group("inference (--task inference)")
    group.add_argument(
        "--rate", type=float, default=5.0, help="requests per second per device, open loop (5)"
    )
    group.add_argument(
        "--duration",
        type=float,
        help="seconds of load per policy (default: 30, or past the scenario's last link step "
        "by 20)",
    )
    group.add_argument("--requests", type=int, help="requests per device, instead of --duration")
    group.add_argument(
        "--artifact",
        type=Path,
        help="serve this model file (default: train the scenario's model once, cached as "
        "OUT/model.ares)",
    )
    group.add_argument(
        "--deadline-ms", type=float, default=1000.0, help="each request's deadline (1000)"
    )


def run_inference_bench(args: argparse.Namespace) -> int:
    from experiments.inference.runner import inference_bench  # torch: only when it runs

    return inference_bench(inference_options(args), launch_serving, train_model)


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The serving bench ``args`` ask for; a ValueError (one line) names a bad flag."""
    training_only = {"--rounds": args.rounds, "--target-accuracy": args.target_accuracy,
                     "--sl-cut": args.sl_cut}  # fmt: skip
    given = [name for name, value in training_only.items() if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: for --task train only")
    from ares.bench_command import bench_scenario, parse_policies  # here: it imports this module

    policies: tuple[str, ...] = SERVING_BENCH_POLICIES
    if args.policies:
        policies = parse_policies(args.policies, SERVING_BENCH_POLICIES)
    if args.alpha is not None and not 0 <= args.alpha <= 1:
        raise ValueError(f"--alpha must lie in [0, 1], got {args.alpha:g}")
    positive = {"--rate": args.rate, "--duration": args.duration,
                "--deadline-ms": args.deadline_ms, "--timeout": args.timeout}  # fmt: skip
    for name, value in positive.items():
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value:g}")
    if args.requests is not None and args.requests < 1:
        raise ValueError(f"--requests must be at least 1, got {args.requests}")
    if args.artifact is not None and not args.artifact.is_file():
        raise ValueError(f"--artifact: no file {args.artifact}")
    return InferenceOptions(
        scenario=bench_scenario(args),
        out=args.out,
        policies=policies,
        rate=args.rate,
        duration_s=args.duration,
        requests=args.requests,
        alpha=args.alpha,
        seed=args.seed,
        artifact=args.artifact,
        quick=args.quick,
        timeout_s=args.timeout,
        deadline_ms=args.deadline_ms,
        progress=False if args.no_progress else None,
    )


def train_model(run: TrainingRun) -> RunResult:
    """Train the scenario's model through the demo's machinery; the edge writes the artifact."""
    batches = run.scenario.batches_per_round
    if run.quick:
        batches = QUICK_BATCHES if batches is None else min(batches, QUICK_BATCHES)
    demo = DemoOptions.for_scenario(
        run.scenario,
        run_dir=run.run_dir,
        overrides={"seed": run.seed, "alpha": run.alpha, "batches_per_round": batches},
        rounds=QUICK_ROUNDS if run.quick else None,
        timeout_s=run.timeout_s,
        extra_edge_flags=("--fresh", "--artifact", str(run.artifact)),
        progress=run.progress,
        label="train",
        verbose=False,
    )
    return run_once(demo)


class _ServingSystem:
    """The run's broker and processes. Links are shaped in each device's agent (a token bucket
    with a one-frame burst), never with tc: tc's bucket must pass a GSO burst (8 frames, 12 kB),
    so after any pause a whole request of one image (VGG5's is 12,288 bytes) would cross it at
    line rate and a link drop would never show in a request's latency. Training's messages are
    far larger than that burst, so the training bench keeps tc."""

    def __init__(self, run: ServingRun, demo: DemoOptions, stack: contextlib.ExitStack) -> None:
        self.run = run
        self._demo = demo
        self._broker = stack.enter_context(LocalBroker(BrokerConfig()))
        self._processes = stack.enter_context(_Processes(run.run_dir, _quiet))

    @property
    def url(self) -> str:
        return self._broker.url

    @property
    def link_clock_at_load(self) -> bool:
        return False  # each agent follows its link's schedule from its own start

    def start_processes(self) -> None:
        run, env = self.run, child_environment(self.url)
        artifact = ("--artifact", str(run.artifact))
        edge = ["serve", *artifact, "--policy", run.policy, "--alpha", str(run.alpha)]
        self._processes.start("edge", edge, env)
        device_env = {**env, "ARES_TELEMETRY_INTERVAL_S": str(run.telemetry_interval_s)}
        for device in self._demo.devices:
            argv = ["device", "--serve", *artifact, "--id", device.device_id,
                    "--deadline-ms", str(run.deadline_ms), *device.flags,
                    *_token_bucket(device.spec)]  # fmt: skip
            self._processes.start(device.device_id, argv, device_env)

    def link_schedules(self) -> Coroutine[Any, Any, None] | None:
        return None

    def problem(self) -> str | None:
        for name in ("edge", *(d.device_id for d in self._demo.devices)):
            code = self._processes.poll(name)
            if code is not None:
                return f"{name} exited (status {code}); see {self.run.run_dir}/{name}.log"
        return None


def _token_bucket(spec: DeviceSpec | None) -> tuple[str, ...]:
    """The agent's own shaping of the scenario device's links (its schedules included)."""
    if spec is None:
        return ()
    downlink = spec.downlink if spec.downlink is not None else spec.uplink
    return ("--link-mode", "token-bucket", "--uplink", json.dumps(spec.uplink),
            "--downlink", json.dumps(downlink))  # fmt: skip


@contextlib.contextmanager
def launch_serving(run: ServingRun) -> Iterator[_ServingSystem]:
    """A fresh broker and, once started, the serving edge and devices; all stopped on exit."""
    logging.getLogger("broker").setLevel(logging.WARNING)
    logging.getLogger("testbed").setLevel(logging.WARNING)
    logging.getLogger("transport").setLevel(logging.WARNING)  # the load's connects: not news
    run.run_dir.mkdir(parents=True, exist_ok=True)
    demo = DemoOptions.for_scenario(
        run.scenario, run_dir=run.run_dir, overrides={"seed": run.seed}, verbose=False
    )
    with contextlib.ExitStack() as stack:
        yield _ServingSystem(run, demo, stack)
