"""``ares bench``'s flags into :class:`~experiments.options.BenchOptions`, each checked; the run.

The bench itself is :mod:`experiments.runner`; here it gets its flags and the demo's machinery
(:func:`ares.demo.run_once`: a Mosquitto, the edge and one process per device) to run each
policy with.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ares.arg_types import partition_arg
from ares.serving_bench_command import add_inference_flags, run_inference_bench
from experiments.options import POLICIES, QUICK_BATCHES, QUICK_ROUNDS, BenchOptions
from experiments.runner import bench
from testbed.scenario import Scenario, check_model_name, load_scenario, shipped_scenarios

if TYPE_CHECKING:
    from ares.demo import RunResult
    from experiments.launch import ScenarioRun

__all__ = ["add_bench_parser", "bench_options", "bench_scenario", "parse_policies", "run_bench"]


def add_bench_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bench`` on an ``add_subparsers()`` result, with ``handler=run_bench``."""
    parser = subparsers.add_parser(
        "bench",
        help="run ARES, fl, sl and static on one scenario and compare them",
        description=(
            "Run ARES, federated learning, split learning (best single cut and cut 1) and a "
            "static plan one after another on the same scenario, seed and data, and compare "
            "them: results.json, summary.md and plots in --out."
        ),
    )
    parser.add_argument(
        "--scenario",
        required=True,
        help="a scenario file, or a shipped scenario: " + ", ".join(shipped_scenarios()),
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for the results")
    parser.add_argument(
        "--model",
        help="train this model instead of the scenario's: a registered one (vgg5, mobilenetv2, "
        "resnet18, ...) or package.module:callable; emulated boards price it from its FLOPs "
        "and bytes per block",
    )
    parser.add_argument(
        "--partition",
        type=partition_arg,
        metavar="SCHEME",
        help="how the devices' shards are drawn, instead of the scenario's: iid, label_skew or "
        "dirichlet:ALPHA",
    )
    parser.add_argument(
        "--policies", help=f"comma-separated, in running order (default {','.join(POLICIES)})"
    )
    parser.add_argument("--rounds", type=int, help="rounds per policy (default: the scenario's)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK_ROUNDS} rounds of at most {QUICK_BATCHES} batches",
    )
    parser.add_argument("--alpha", type=float, help="0: save device energy .. 1: save time")
    parser.add_argument("--seed", type=int, default=0, help="the same for every policy")
    parser.add_argument(
        "--target-accuracy",
        type=float,
        help="for time to target (default: 90%% of the way from the initial accuracy to the "
        "lowest final accuracy of all policies)",
    )
    parser.add_argument("--sl-cut", type=int, help="sl-best's cut (default: the cost model's)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per policy run, seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_inference_flags(parser)
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    """The ``bench`` handler: options from flags, then the bench, each run by the demo's means
    (``--task inference``: the serving bench, :mod:`ares.serving_bench_command`)."""
    if args.task == "inference":
        return run_inference_bench(args)
    return bench(bench_options(args), _run_scenario)


def _run_scenario(run: ScenarioRun) -> RunResult:
    from ares.demo import DemoOptions, run_once

    demo = DemoOptions.for_scenario(
        run.scenario,
        run_dir=run.run_dir,
        overrides=run.overrides,
        rounds=run.rounds,
        timeout_s=run.timeout_s,
        # A checkpoint left by an earlier bench in the same directory must not be resumed.
        extra_edge_flags=("--fresh",),
        progress=run.progress,
        label=run.label,
        verbose=False,
    )
    return run_once(demo)


def bench_options(args: argparse.Namespace) -> BenchOptions:
    """The bench ``args`` ask for; a ValueError (one line) names a bad flag."""
    policies = parse_policies(args.policies) if args.policies else POLICIES
    for name, value, low, high in (
        ("--alpha", args.alpha, 0.0, 1.0),
        ("--target-accuracy", args.target_accuracy, 0.0, 1.0),
    ):
        if value is not None and not low <= value <= high:
            raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {value:g}")
    for name, number in (("--rounds", args.rounds), ("--sl-cut", args.sl_cut)):
        if number is not None and number < 1:
            raise ValueError(f"{name} must be at least 1, got {number}")
    if args.timeout <= 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout:g}")
    scenario = bench_scenario(args)
    if args.partition is not None:
        scenario = scenario.model_copy(update={"partition": args.partition})
    return BenchOptions(
        scenario=scenario,
        out=args.out,
        policies=policies,
        rounds=args.rounds,
        alpha=args.alpha,
        seed=args.seed,
        target_accuracy=args.target_accuracy,
        quick=args.quick,
        sl_cut=args.sl_cut,
        timeout_s=args.timeout,
        progress=False if args.no_progress else None,
    )


def bench_scenario(args: argparse.Namespace) -> Scenario:
    """``--scenario``, with ``--model``'s model if given; a ValueError names a bad flag."""
    scenario = load_scenario(args.scenario)
    if args.model is not None:
        try:
            check_model_name(args.model)
        except ValueError as exc:
            raise ValueError(f"--model: {exc}") from None
        scenario = scenario.model_copy(update={"model": args.model})
    return scenario


def parse_policies(text: str, choices: tuple[str, ...] = POLICIES) -> tuple[str, ...]:
    """``ares,fl`` -> ("ares", "fl"), in the order given; names not in ``choices`` or repeated
    are errors."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        raise ValueError(
            f"--policies: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(choices)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--policies: each policy once, got {text!r}")
    return names
