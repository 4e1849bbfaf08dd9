"""The serving bench (``ares bench --task inference``): every serving policy answers the same
requests, sent at the same fixed rate, on the same scenario, model and seed, one policy after
another, each on a fresh broker with fresh processes.

The model: ``--artifact``, or the scenario's model trained once through the training machinery
(the edge writes its artifact, exits calibrated on its held-out set) and cached as
``out/model.ares`` for the policies and later runs. Everything lands in ``out``::

    results.json          per policy and device: latency, energy per request, accuracy, exit
                          rate, counts, the plans; settings, the model, the machine
    summary.md            the table, ARES against sl-best, the link drop's recovery
    latency_cdf.png       latency distribution per policy
    timeline-<policy>.png per device: cut and exit rate over time, with the link rate
    runs/<policy>/        each run's logs and requests.jsonl (every request and its answer)
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from experiments.inference.aggregate import summarise, summarise_devices
from experiments.inference.launch import LaunchServing, ServingRun, TrainingRun, TrainModel
from experiments.inference.load import LoadError, LoadSettings, PolicyTrace, drive
from experiments.inference.options import InferenceOptions
from experiments.inference.recovery import link_drops, recovery
from experiments.inference.report import render_summary, summary_table
from experiments.inference.workload import Workload, held_out_set, make_workload
from experiments.results import load_average, machine_info
from serving.artifact import ArtifactError, ModelArtifact, read_artifact
from testbed.schedule import parse_schedule
from transport import MqttSettings

__all__ = ["inference_bench"]

MODEL_FILE = "model.ares"


def inference_bench(options: InferenceOptions, launch: LaunchServing, train: TrainModel) -> int:
    """Run every policy, write the results, print the table; the exit status (0: every policy
    ran; 1: one failed, the others still compared; 130: interrupted)."""
    scenario = options.scenario
    print(
        f"ares bench --task inference: scenario {scenario.name}, {len(scenario.devices)} "
        f"devices, {options.rate:g} requests/s each for "
        f"{options.requests_per_device} requests, alpha {options.effective_alpha:g}, seed "
        f"{options.seed}; policies {', '.join(options.policies)}; out {options.out}",
        flush=True,
    )
    options.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    try:
        path, artifact = _model(options, train)
    except (ArtifactError, RuntimeError) as exc:
        print(f"ares bench: no model to serve: {exc}", file=sys.stderr)
        return 1
    data = held_out_set(scenario, options.seed)
    devices = tuple(d.id for d in scenario.devices)
    workload = make_workload(
        data,
        artifact,
        devices,
        per_device=options.requests_per_device,
        rate=options.rate,
        seed=options.seed,
        deadline_ms=options.deadline_ms,
    )
    print(
        f"  model    {path}: {artifact.spec.name}, exits at {list(artifact.positions)}; "
        f"full model {workload.full_accuracy:.4f} on the {len(workload.requests)} requests "
        f"({artifact.calibration.full_accuracy:.4f} on its calibration's validation half)",
        flush=True,
    )
    policies: dict[str, dict[str, Any]] = {}
    traces: dict[str, PolicyTrace] = {}
    failed: dict[str, str] = {}
    for index, policy in enumerate(options.policies, start=1):
        run_dir = options.out / "runs" / policy
        print(f"ares bench: {policy} ({index}/{len(options.policies)}); logs in {run_dir}",
              flush=True)  # fmt: skip
        try:
            trace, clock_at_load = _run_policy(options, launch, path, workload, policy, run_dir)
        except KeyboardInterrupt:
            print("\nares bench: interrupted; stopped every process", file=sys.stderr)
            return 130
        except (LoadError, TimeoutError, OSError) as exc:
            failed[policy] = str(exc) or type(exc).__name__
            print(f"ares bench: {policy} failed: {failed[policy]}", file=sys.stderr)
            continue
        _write_requests(run_dir, trace)
        policies[policy] = policy_results(options, trace, devices, clock_at_load)
        line = policies[policy]
        print(f"  {policy:<12} {line['answered']}/{line['sent']} answered, mean "
              f"{_ms(line['latency_ms_mean'])}, p99 {_ms(line['latency_ms_p99'])}, "
              f"accuracy {_num(line['accuracy'])}", flush=True)  # fmt: skip
        traces[policy] = trace
    machine["load_average_end"] = load_average()
    document = {
        "task": "inference",
        "scenario": scenario.name,
        "scenario_settings": scenario.model_dump(mode="json"),
        "seed": options.seed,
        "rate": options.rate,
        "requests_per_device": options.requests_per_device,
        "duration_s": options.requests_per_device / options.rate,
        "deadline_ms": options.deadline_ms,
        "alpha": options.effective_alpha,
        "artifact": _artifact_info(path, artifact),
        "full_accuracy": workload.full_accuracy,
        "machine": machine,
        "policies": policies,
        "failed": failed,
    }
    write_inference_results(options.out, document, traces)
    if policies:
        print()
        print(summary_table(document))
    print(f"results in {options.out}: results.json, summary.md and plots")
    return 1 if failed else 0


def write_inference_results(
    out: Path, document: dict[str, Any], traces: dict[str, PolicyTrace]
) -> None:
    """results.json, summary.md and the plots (those the traces allow)."""
    from experiments.inference.plots import write_plots

    (out / "results.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    (out / "summary.md").write_text(render_summary(document))
    if traces:
        write_plots(document, traces, out)


def policy_results(
    options: InferenceOptions, trace: PolicyTrace, devices: tuple[str, ...], clock_at_load: bool
) -> dict[str, Any]:
    """One policy's entry of results.json."""
    links = _links(options, trace, clock_at_load)
    last = trace.plans[-1][1] if trace.plans else None
    end_s = max((r.sent_s for r in trace.records), default=0.0) + 1e-9
    return {
        **summarise(trace.records, trace.windows),
        "devices": summarise_devices(trace.records, trace.windows, devices),
        "plan": None if last is None else {d: _planned(e) for d, e in last["devices"].items()},
        "plans": [
            {
                "at_s": at,
                "version": plan["version"],
                "reason": plan["reason"],
                "devices": {d: [e["cut"], e["threshold"]] for d, e in plan["devices"].items()},
            }
            for at, plan in trace.plans
        ],
        "links": links,
        "recovery": [
            recovery(trace.records, trace.plans, drop, end_s) for drop in link_drops(links)
        ],
        "warmup_requests": trace.warmups,
        "duplicate_answers": trace.duplicate_answers,
        "unmatched_answers": trace.unmatched_answers,
        "load_s": trace.load_s,
    }


PLAN_FIELDS = ("cut", "threshold", "predicted_latency_ms", "predicted_energy_j",
               "predicted_accuracy", "local_fraction")  # fmt: skip


def _planned(entry: dict[str, Any]) -> dict[str, Any]:
    return {name: entry[name] for name in PLAN_FIELDS}


def _links(
    options: InferenceOptions, trace: PolicyTrace, clock_at_load: bool
) -> dict[str, dict[str, Any]]:
    """Each device's uplink schedule on the load's clock: where its time 0 fell, and its
    steps (the launcher's schedules start with the load; a device's own, at its start)."""
    links = {}
    for spec in options.scenario.devices:
        origin = 0.0 if clock_at_load else trace.online_s.get(spec.id, 0.0)
        changes = parse_schedule(spec.uplink).scaled(options.scenario.time_scale).changes()
        links[spec.id] = {"origin_s": origin, "changes": [list(c) for c in changes]}
    return links


def _run_policy(
    options: InferenceOptions,
    launch: LaunchServing,
    artifact: Path,
    workload: Workload,
    policy: str,
    run_dir: Path,
) -> tuple[PolicyTrace, bool]:
    run = ServingRun(
        scenario=options.scenario,
        run_dir=run_dir,
        artifact=artifact,
        policy=policy,
        alpha=options.effective_alpha,
        seed=options.seed,
        deadline_ms=options.deadline_ms,
        telemetry_interval_s=options.telemetry_interval_s,
    )
    with launch(run) as system:
        settings = LoadSettings(
            mqtt=MqttSettings(url=system.url),
            devices=tuple(d.id for d in options.scenario.devices),
            request_bound_s=options.request_bound_s,
            ready_timeout_s=options.timeout_s,
            telemetry_bound_s=3 * options.telemetry_interval_s + 10.0,
        )
        load = drive(
            settings, workload, system.problem, system.start_processes, system.link_schedules
        )
        trace = asyncio.run(load)
        return trace, system.link_clock_at_load


def _model(options: InferenceOptions, train: TrainModel) -> tuple[Path, ModelArtifact]:
    """The artifact to serve: given, cached in ``out``, or trained now (and cached)."""
    if options.artifact is not None:
        return options.artifact, read_artifact(options.artifact)
    path = options.out / MODEL_FILE
    if path.is_file():
        artifact = read_artifact(path)
        if artifact.spec.name == options.scenario.model:
            print(f"  model    {path}: cached, reused", flush=True)
            return path, artifact
        print(f"  model    {path} serves {artifact.spec.name}, not "
              f"{options.scenario.model}: trained again", flush=True)  # fmt: skip
    print(f"  model    training {options.scenario.model} on the scenario once "
          f"(logs in {options.out / 'runs' / 'train'})", flush=True)  # fmt: skip
    outcome = train(
        TrainingRun(
            scenario=options.scenario,
            run_dir=options.out / "runs" / "train",
            artifact=path,
            seed=options.seed,
            alpha=options.effective_alpha,
            quick=options.quick,
            timeout_s=options.timeout_s,
            progress=options.progress,
        )
    )
    if not outcome.ok or not path.is_file():
        raise RuntimeError(f"training failed: {outcome.problem or 'no model file written'}")
    return path, read_artifact(path)


def _artifact_info(path: Path, artifact: ModelArtifact) -> dict[str, Any]:
    calibration = artifact.calibration
    return {
        "path": str(path),
        "model": artifact.spec.name,
        "fingerprint": artifact.fingerprint,
        "source": artifact.source,
        "exits": list(artifact.positions),
        "full_accuracy": calibration.full_accuracy,
        "exit_accuracy": {str(p): a for p, a in calibration.exit_accuracy.items()},
        "validation_samples": calibration.samples,
    }


def _write_requests(run_dir: Path, trace: PolicyTrace) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "requests.jsonl").open("w") as out:
        for record in trace.records:
            out.write(json.dumps(record.to_dict()) + "\n")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
