"""The bench (``ares bench``): ARES against federated and split learning, one policy after another.

Every policy runs the same scenario with the same seed and data shards, never two at once, since
they would compete for the CPU. A run is started by the :data:`RunScenario` the caller passes:
the CLI's is the demo's machinery (a Mosquitto, the edge and one process per device), so this
package never imports the CLI. Each run gets its own broker: a fresh one costs well under a
second against minutes of training, and it carries no retained status, plan or queued messages
over from the previous policy. Everything lands in ``out``::

    results.json     every round of every policy (the edge's reports), settings, machine, summary
    summary.md       the comparison: tables, ARES against the others, findings, definitions
    *.png            accuracy against time, split points and links, energy, round times
    runs/<policy>/   each run's logs, report and checkpoint

Policies: ``ares`` (re-planned every round), ``static`` (planned once), ``fl`` (every block on
the device), ``sl-best`` (classic split learning at the one cut the cost model scores best for
this scenario, chosen before the runs: :func:`choose_sl_cut`) and ``sl-first`` (cut 1).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from experiments.comparison import summarise
from experiments.report import final_table, render_summary
from planner.policies import POLICIES as EDGE_POLICIES
from schemas import wire_itemsize
from testbed.scenario import (
    Scenario,
    ScheduleSpec,
    samples_per_round,
)
from testbed.schedule import parse_schedule

if TYPE_CHECKING:  # torch and matplotlib load only when a bench runs, not with every command
    from device_agent.emulation import Emulation
    from edge_service.planning import DeviceReadings, PlanDefaults
    from splitnn.profiling import BlockProfile

__all__ = [
    "POLICIES",
    "BenchOptions",
    "RunOutcome",
    "RunScenario",
    "ScenarioRun",
    "SlChoice",
    "bench",
    "choose_sl_cut",
    "machine_info",
]

# The edge's policies, but sl in two flavours: at the cost model's best shared cut and at cut 1.
POLICIES = tuple(sorted({*EDGE_POLICIES.names(), "sl-best", "sl-first"} - {"sl"}))
QUICK_ROUNDS = 2
QUICK_BATCHES = 3


@dataclass(frozen=True)
class PolicyRun:
    """One bench entry: its name and the edge's policy (and cut) that implements it."""

    name: str
    policy: str
    split: int | None = None


@dataclass(frozen=True)
class BenchOptions:
    scenario: Scenario
    out: Path
    policies: tuple[str, ...] = POLICIES
    rounds: int | None = None  # None: the scenario's
    alpha: float | None = None  # None: the scenario's
    seed: int = 0
    target_accuracy: float | None = None  # None: see experiments.metrics.default_target
    quick: bool = False
    sl_cut: int | None = None  # sl-best's cut; None: chosen by the cost model
    timeout_s: float = 1800.0  # per policy run
    progress: bool | None = None  # None: bars when stderr is a terminal

    @property
    def effective_alpha(self) -> float:
        return self.scenario.alpha if self.alpha is None else self.alpha

    @property
    def effective_rounds(self) -> int:
        if self.rounds is not None:
            return self.rounds
        return QUICK_ROUNDS if self.quick else self.scenario.rounds

    @property
    def batches_per_round(self) -> int | None:
        """The scenario's, capped in a quick run (None: one local epoch)."""
        batches = self.scenario.batches_per_round
        if self.quick:
            return QUICK_BATCHES if batches is None else min(batches, QUICK_BATCHES)
        return batches


@dataclass(frozen=True)
class ScenarioRun:
    """One run of the scenario: the edge's settings over the scenario's (None: the scenario's),
    where its processes log, and how the run is shown. It starts from scratch, never resuming a
    checkpoint an earlier bench left in ``run_dir``."""

    scenario: Scenario
    run_dir: Path
    overrides: Mapping[str, Any]
    rounds: int
    timeout_s: float
    progress: bool | None  # None: a bar when stderr is a terminal
    label: str  # names the run in progress output: the policy


class RunOutcome(Protocol):
    """How a run ended. ``code``: 0 when the edge finished and wrote its report; 130 when
    interrupted; else a failure, described by ``problem``."""

    @property
    def code(self) -> int: ...
    @property
    def wall_s(self) -> float: ...
    @property
    def run_dir(self) -> Path: ...
    @property
    def report(self) -> dict[str, Any] | None: ...
    @property
    def problem(self) -> str: ...
    @property
    def ok(self) -> bool: ...


RunScenario = Callable[[ScenarioRun], RunOutcome]  # runs it to the end, stopping what it started


def bench(options: BenchOptions, run_scenario: RunScenario) -> int:
    """Run every policy, write the results, print the comparison; the exit status.

    0 when every policy finished; 1 when one failed (the others still run and are compared);
    130 when interrupted.
    """
    scenario = options.scenario
    print(
        f"ares bench: scenario {scenario.name}, {len(scenario.devices)} devices, "
        f"{options.effective_rounds} rounds, alpha {options.effective_alpha:g}, seed "
        f"{options.seed}; policies {', '.join(options.policies)}; out {options.out}"
    )
    options.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    choice = None
    if "sl-best" in options.policies:
        choice = choose_sl_cut(options)
        print(f"  sl-best  cut {choice.cut}: {choice.how}")
    runs = _policy_runs(options.policies, choice)
    results: dict[str, RunOutcome] = {}
    for index, run in enumerate(runs, start=1):
        result = _run_policy(options, run_scenario, run, index, len(runs))
        if result.code == 130:
            print("\nares bench: interrupted; stopped every process", file=sys.stderr)
            return 130
        results[run.name] = result
        if not result.ok:
            print(f"ares bench: {run.name} failed: {result.problem}; its logs are in "
                  f"{result.run_dir}", file=sys.stderr)  # fmt: skip
    machine["load_average_end"] = _load_average()
    document = build_results(options, machine, choice, results)
    _write(options.out, document)
    failed = document["failed"]
    if document.get("summary"):
        print()
        print(final_table(document["summary"]))
        for finding in document["summary"]["findings"]:
            print(f"  {finding}")
    print(f"results in {options.out}: results.json, summary.md and plots")
    for name, problem in failed.items():
        print(f"ares bench: {name} FAILED: {problem}", file=sys.stderr)
    return 1 if failed else 0


def _policy_runs(names: Sequence[str], choice: SlChoice | None) -> list[PolicyRun]:
    runs = []
    for name in names:
        if name == "sl-best":
            assert choice is not None  # chosen whenever sl-best is asked for
            runs.append(PolicyRun(name, "sl", choice.cut))
        elif name == "sl-first":
            runs.append(PolicyRun(name, "sl", 1))
        else:
            runs.append(PolicyRun(name, name))
    return runs


def _run_policy(
    options: BenchOptions, run_scenario: RunScenario, run: PolicyRun, index: int, total: int
) -> RunOutcome:
    run_dir = options.out / "runs" / run.name
    cut = f" at cut {run.split}" if run.split is not None else ""
    print(f"ares bench: {run.name} ({index}/{total}): policy {run.policy}{cut}; logs in {run_dir}",
          flush=True)  # fmt: skip
    result = run_scenario(
        ScenarioRun(
            options.scenario,
            run_dir=run_dir,
            overrides={
                "policy": run.policy,
                "split": run.split,
                "alpha": options.effective_alpha,
                "seed": options.seed,
                "batches_per_round": options.batches_per_round,
            },
            rounds=options.effective_rounds,
            timeout_s=options.timeout_s,
            progress=options.progress,
            label=run.name,
        )
    )
    if result.ok:
        print(f"  {run.name:<8} done in {result.wall_s:.1f} s", flush=True)
    return result


# --- results ------------------------------------------------------------------------------------


def build_results(
    options: BenchOptions,
    machine: Mapping[str, Any],
    choice: SlChoice | None,
    results: Mapping[str, RunOutcome],
) -> dict[str, Any]:
    """The results.json document: scenario, machine, settings, every report, the summary."""
    reports = {name: r.report for name, r in results.items() if r.ok and r.report is not None}
    scenario = options.scenario
    link_modes = sorted(
        {
            device.get("link_mode", "unknown")
            for report in reports.values()
            for entry in report["rounds"]
            for device in entry["devices"].values()
        }
    )
    settings: dict[str, Any] = {
        "alpha": options.effective_alpha,
        "rounds": options.effective_rounds,
        "seed": options.seed,
        "target_accuracy": options.target_accuracy,
        "policies": list(options.policies),
        "quick": options.quick,
        "model": scenario.model,
        "dataset": scenario.dataset,
        "batch_size": scenario.batch_size,
        "batches_per_round": options.batches_per_round,
        "time_scale": scenario.time_scale,
        "link_mode": ", ".join(link_modes) or "unknown",
        "broker": "a fresh local Mosquitto per policy run",
        "timeout_s": options.timeout_s,
    }
    if choice is not None:
        settings["sl_best"] = {"cut": choice.cut, "how": choice.how, "predicted": choice.predicted}
    document: dict[str, Any] = {
        "scenario": scenario.model_dump(mode="json"),
        "machine": dict(machine),
        "settings": settings,
        "policies": reports,
        "runs": {
            name: {"code": r.code, "wall_s": r.wall_s, "run_dir": str(r.run_dir)}
            for name, r in results.items()
        },
        "failed": {
            name: f"{r.problem or f'exit {r.code}'}; logs in {r.run_dir}"
            for name, r in results.items()
            if not r.ok
        },
    }
    if reports:
        document["summary"] = summarise(
            reports,
            options.effective_alpha,
            target_accuracy=options.target_accuracy,
            walls={name: results[name].wall_s for name in reports},
        )
    return document


def _write(out: Path, document: Mapping[str, Any]) -> None:
    from experiments.plots import write_plots

    (out / "results.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    if document.get("summary"):
        (out / "summary.md").write_text(render_summary(document))
        write_plots(document, out)


def machine_info() -> dict[str, Any]:
    """Where the numbers were taken; the load average says how busy the machine was."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch_version,
        "platform": platform.platform(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_start": _load_average(),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not on every platform
        return None


# --- choosing sl-best's cut ---------------------------------------------------------------------


@dataclass(frozen=True)
class SlChoice:
    """sl-best's cut, how it was chosen, and the cost model's objective for each candidate."""

    cut: int
    how: str
    # The cost model's objective: "ares", "fl", "cut 1", ...; None where infeasible.
    predicted: dict[str, float | None] = field(default_factory=dict)


def choose_sl_cut(options: BenchOptions) -> SlChoice:
    """The single cut for every device that minimises the planner's objective for the scenario.

    Priced the way the edge prices a plan (:class:`edge_service.planning.SplitPlanner`, the same
    objective and normalisation by federated learning), from what the edge would know after
    registration: each emulated board's compute profile (its per-block times, computed from this
    host's as the agent does), its power figures, this host's per-block times for the edge's
    part, the scenario's initial link rates and each device's samples per round. Only cuts
    below L are candidates: at L nothing is split.
    """
    inputs = scenario_plan_inputs(
        options.scenario,
        alpha=options.effective_alpha,
        seed=options.seed,
        batches_per_round=options.batches_per_round,
    )
    blocks = inputs.blocks
    if options.sl_cut is not None:
        if not 1 <= options.sl_cut < blocks:
            raise ValueError(f"--sl-cut must lie in 1..{blocks - 1} for {options.scenario.model}")
        return SlChoice(options.sl_cut, "given with --sl-cut", inputs.objectives())
    predicted = inputs.objectives()
    candidates = {
        cut: value for cut in range(1, blocks) if (value := predicted[f"cut {cut}"]) is not None
    }
    if not candidates:
        raise ValueError(f"no cut below {blocks} is feasible for every device of the scenario")
    cut = min(candidates, key=lambda c: candidates[c])
    how = (
        f"chosen before the runs by the cost model: of cuts 1..{blocks - 1} for every device, "
        f"cut {cut} has the lowest predicted objective ({candidates[cut]:.3f} at alpha "
        f"{options.effective_alpha:g}, fl = 1.0), with the emulated boards' compute and power, "
        "this host's times for the edge's part and the scenario's initial link rates"
    )
    return SlChoice(cut, how, predicted)


@dataclass(frozen=True)
class ScenarioPlanInputs:
    """What the edge's planner would know about a scenario's devices after registration."""

    model: str
    blocks: int
    alpha: float
    server: BlockProfile
    readings: dict[str, DeviceReadings]
    defaults: PlanDefaults

    def objective(self, policy: str, cut: int = 1) -> float | None:
        """The plan's objective for ``policy`` (``sl`` at ``cut``); None if infeasible."""
        from edge_service.planning import SplitPlanner
        from planner import PlanningError

        planner = SplitPlanner(
            policy=policy,
            alpha=self.alpha,
            model_name=self.model,
            server=self.server,
            defaults=self.defaults,
            fixed_split=cut,
            fixed_splits={},
        )
        try:
            value = planner.plan(self.readings).objective
        except PlanningError:
            return None
        return value if math.isfinite(value) else None

    def objectives(self) -> dict[str, float | None]:
        """ARES's plan, federated learning and every shared cut below L, on one scale."""
        return {
            "ares": self.objective("ares"),
            "fl": self.objective("fl"),
            **{f"cut {cut}": self.objective("sl", cut) for cut in range(1, self.blocks)},
        }


def scenario_plan_inputs(
    scenario: Scenario, *, alpha: float, seed: int, batches_per_round: int | None
) -> ScenarioPlanInputs:
    """Profile this host for the edge's part and price each device as its agent would report.

    Torch runs on one thread, as the demo runs the edge and the agents.
    """
    import torch

    from device_agent.emulation import Emulation
    from device_agent.settings import DeviceSettings
    from edge_service.planning import DeviceReadings, PlanDefaults
    from edge_service.settings import EdgeSettings
    from schemas import ComputeProfile
    from splitnn.data import load_dataset
    from splitnn.models import ModelSpec, num_blocks
    from splitnn.profiling import profile_blocks

    train = load_dataset(scenario.dataset, "train", data_dir=scenario.data_dir, seed=seed)
    channels, size, _ = train.input_shape
    spec = ModelSpec(scenario.model, channels, size, train.num_classes)
    torch.set_num_threads(1)
    host = profile_blocks(spec, scenario.batch_size)
    samples = samples_per_round(scenario, seed=seed, batches_per_round=batches_per_round)
    emulations: dict[str, Emulation] = {}  # per board: preparing one may profile the host
    readings = {}
    for device in scenario.devices:
        emulation = emulations.get(device.profile)
        if emulation is None:
            emulation = Emulation(
                DeviceSettings(
                    device_id=device.id, profile=device.profile, time_scale=scenario.time_scale
                )
            )
            emulation.prepare(spec.name)
            emulations[device.profile] = emulation
        forward, backward = emulation.block_times(
            host.forward_s, host.backward_s, scenario.batch_size, spec.name
        )
        downlink = device.downlink if device.downlink is not None else device.uplink
        readings[device.id] = DeviceReadings(
            samples=samples[device.id],
            compute=ComputeProfile(
                model=spec.name,
                batch_size=scenario.batch_size,
                forward_s=forward,
                backward_s=backward,
            ),
            power=emulation.power(),
            memory_bytes=emulation.profile.memory_bytes,
            uplink_bps=_initial_bps(device.uplink, scenario.time_scale),
            downlink_bps=_initial_bps(downlink, scenario.time_scale),
            link_source="scenario",
            wire_itemsize=wire_itemsize(scenario.wire_dtype),
        )
    return ScenarioPlanInputs(
        model=spec.name,
        blocks=num_blocks(spec),
        alpha=alpha,
        server=host,
        readings=readings,
        # The edge's default assumptions for what a device does not declare.
        defaults=PlanDefaults.from_settings(EdgeSettings(checkpoint=None)),
    )


def _initial_bps(schedule: ScheduleSpec, time_scale: float) -> float:
    return parse_schedule(schedule).scaled(time_scale).initial_mbps * 1e6
