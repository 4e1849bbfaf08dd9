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
this scenario, chosen before the runs: :func:`experiments.pricing.choose_sl_cut`) and
``sl-first`` (cut 1).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from experiments.launch import RunOutcome, RunScenario, ScenarioRun
from experiments.options import BenchOptions
from experiments.pricing import SlChoice, choose_sl_cut
from experiments.report import final_table
from experiments.results import build_results, load_average, machine_info, write_results

__all__ = ["bench"]


@dataclass(frozen=True)
class PolicyRun:
    """One bench entry: its name and the edge's policy (and cut) that implements it."""

    name: str
    policy: str
    split: int | None = None


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
    machine["load_average_end"] = load_average()
    document = build_results(options, machine, choice, results)
    write_results(options.out, document)
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
