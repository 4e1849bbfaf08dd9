"""Bandwidth sweep of a scenario: `ares bench` at several link rates and wire dtypes.

Every device's uplink (and downlink) is set to each rate in turn, once with float32 and once
with float16 activations on the wire; each point is a full `ares bench` run (its own results.json,
summary.md and plots under OUT/<rate>mbit-<dtype>/), and the sweep prints one table of ARES against
fl and sl, and writes it to OUT/sweep.md.

    python benchmarks/bench_sweep.py --out runs/sweep                     # the paper's testbed
    python benchmarks/bench_sweep.py --rates 5,100 --dtypes float16 --rounds 2 --out /tmp/s
    python benchmarks/bench_sweep.py --out runs/sweep --table-only        # re-tabulate a sweep

Next to each measured saving the table shows the cost model's prediction for the same runs (the
plans' predicted round times and energies), so a gap between model and machine stands out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from testbed.scenario import load_scenario


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="paper-testbed")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rates", default="5,20,50,100", help="Mbit/s, comma-separated")
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--policies", default="ares,fl,sl-best")
    parser.add_argument("--rounds", type=int, help="rounds per policy (default: the scenario's)")
    parser.add_argument(
        "--table-only", action="store_true", help="only rebuild the table from OUT's results"
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    dtypes = args.dtypes.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for dtype in dtypes:
        for rate in rates:
            point = args.out / f"{rate:g}mbit-{dtype}"
            results = point / "results.json"
            if args.table_only:
                if results.exists():
                    rows.append(_row(rate, dtype, json.loads(results.read_text())))
                continue
            scenario_file = args.out / f"{point.name}.yaml"
            scenario_file.write_text(yaml.safe_dump(_variant(args.scenario, rate, dtype)))
            command = [
                sys.executable, "-m", "ares", "bench", "--scenario", str(scenario_file),
                "--out", str(point), "--policies", args.policies, "--no-progress",
            ]  # fmt: skip
            if args.rounds:
                command += ["--rounds", str(args.rounds)]
            print(f"== {rate:g} Mbit/s, {dtype}: {' '.join(command)}", flush=True)
            code = subprocess.run(command, check=False).returncode
            if code != 0 or not results.exists():
                print(f"   failed (exit {code}); see {point}", flush=True)
                continue
            rows.append(_row(rate, dtype, json.loads(results.read_text())))
    table = _table(rows)
    (args.out / "sweep.md").write_text(table)
    print(table)
    return 0


def _variant(name: str, rate_mbps: float, dtype: str) -> dict[str, Any]:
    scenario = load_scenario(name)
    data = scenario.model_dump(mode="json", exclude_none=True)
    data["name"] = f"{scenario.name}-{rate_mbps:g}mbit-{dtype}"
    data["wire_dtype"] = dtype
    for device in data["devices"]:
        device["uplink"] = rate_mbps
        device.pop("downlink", None)  # the downlink follows the uplink
    return data


def _row(rate: float, dtype: str, results: dict[str, Any]) -> dict[str, Any]:
    summary = results["summary"]
    policies = summary["policies"]
    row: dict[str, Any] = {
        "rate": rate,
        "dtype": dtype,
        "best": summary.get("best_objective"),
        "ares_splits": _cuts(results["policies"].get("ares", {})),
        "objective": {name: p.get("objective") for name, p in policies.items()},
        "accuracy": {name: p.get("final_accuracy") for name, p in policies.items()},
    }
    for other, ratios in summary.get("ares_vs", {}).items():
        row[other] = dict(ratios)
        row[other].update(_changes_from_rounds(results["policies"], "ares", other))
    return row


def _cuts(report: dict[str, Any]) -> str:
    """ARES's cuts in its last round, device by device (the plan it settled on)."""
    if not report.get("rounds"):
        return "—"
    devices = report["rounds"][-1]["devices"]
    return " ".join(str(devices[d]["split"]) for d in sorted(devices))


def _changes_from_rounds(reports: dict[str, Any], name: str, other: str) -> dict[str, float | None]:
    """Relative changes of ``name`` against ``other`` from the rounds' per-device entries.

    ``predicted_time``, ``predicted_energy``: the cost model's, over the runs' plans.
    ``device_time``: the slowest device's measured round (start sent to part received) summed
    over rounds: the training time without the edge's per-round planning, aggregation and
    evaluation, which cost every policy the same.
    """

    def totals(report: dict[str, Any]) -> tuple[float, float, float]:
        rounds = [r["devices"].values() for r in report.get("rounds", [])]
        time = sum(max((d["predicted_time_s"] for d in r), default=0.0) for r in rounds)
        energy = sum(d["predicted_energy_j"] for r in rounds for d in r)
        device = sum(max((d.get("round_s") or 0.0 for d in r), default=0.0) for r in rounds)
        return time, energy, device

    keys = ("predicted_time", "predicted_energy", "device_time")
    if name not in reports or other not in reports:
        return dict.fromkeys(keys)
    return {
        key: mine / theirs - 1 if mine and theirs else None
        for key, mine, theirs in zip(
            keys, totals(reports[name]), totals(reports[other]), strict=True
        )
    }


def _pct(change: float | None) -> str:
    # Relative changes (ARES - other) / other, shown as ARES's saving.
    return "—" if change is None else f"{round(-100 * change):+d}%"  # an int: never "-0%"


def _saving(ratios: dict[str, Any], what: str) -> str:
    return f"{_pct(ratios.get(what))} ({_pct(ratios.get(f'predicted_{what}'))})"


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| link | wire | ARES cuts | time vs fl | device time vs fl | energy vs fl | "
        "time vs sl-best | energy vs sl-best | objective ares / fl / sl-best | best |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        fl, sl = row.get("fl", {}), row.get("sl-best", {})
        objective = " / ".join(
            "—" if row["objective"].get(p) is None else f"{row['objective'][p]:.3f}"
            for p in ("ares", "fl", "sl-best")
        )
        lines.append(
            f"| {row['rate']:g} Mbit/s | {row['dtype']} | {row['ares_splits']} | "
            f"{_saving(fl, 'time')} | {_pct(fl.get('device_time'))} | "
            f"{_saving(fl, 'energy')} | {_saving(sl, 'time')} | "
            f"{_saving(sl, 'energy')} | {objective} | {row['best']} |"
        )
    lines.append("")
    lines.append(
        "Percentages are ARES's measured savings (positive: ARES took less time or energy), "
        "and in brackets the cost model's prediction for the same runs. Time: the rounds at "
        "the edge; device time: the slowest device's rounds (start sent to part received), "
        "without the edge's per-round aggregation and evaluation, which the cost model leaves "
        "out. ARES cuts: its last round's cut per device, devices in alphabetical order."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
