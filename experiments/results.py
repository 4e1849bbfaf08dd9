"""results.json: the scenario, the machine, the settings, every policy's report and the
comparison; and the files written from it (summary.md, the plots)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.comparison import summarise
from experiments.launch import RunOutcome
from experiments.options import BenchOptions
from experiments.pricing import SlChoice
from experiments.report import render_summary

__all__ = ["build_results", "load_average", "machine_info", "write_results"]


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
        "partition": scenario.partition,  # how the devices' shards were drawn
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


def write_results(out: Path, document: Mapping[str, Any]) -> None:
    """results.json, and where any policy finished, summary.md and the plots."""
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
        "load_average_start": load_average(),
    }


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not on every platform
        return None
