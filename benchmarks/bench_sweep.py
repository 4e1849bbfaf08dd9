"""Bandwidth sweep of a scenario: `ares bench` at several link rates and wire dtypes.

Every device's uplink (and downlink) is set to each rate in turn, once with float32 and once
with float16 activations on the wire; each point is a full `ares bench` run (its own results.json,
summary.md and plots under OUT/<rate>mbit-<dtype>/), and the sweep prints one table of ARES against
fl and sl, and writes it to OUT/sweep.md.

    python benchmarks/bench_sweep.py --out runs/sweep                     # the paper's testbed
    python benchmarks/bench_sweep.py --rates 5,100 --dtypes float16 --rounds 2 --out /tmp/s
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
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    dtypes = args.dtypes.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for dtype in dtypes:
        for rate in rates:
            point = args.out / f"{rate:g}mbit-{dtype}"
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
            results = point / "results.json"
            if code != 0 or not results.exists():
                print(f"   failed (exit {code}); see {point}", flush=True)
                continue
            rows.append(_row(rate, dtype, json.loads(results.read_text())["summary"]))
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


def _row(rate: float, dtype: str, summary: dict[str, Any]) -> dict[str, Any]:
    policies = summary["policies"]
    ares = policies.get("ares", {})
    row: dict[str, Any] = {
        "rate": rate,
        "dtype": dtype,
        "best": summary.get("best_objective"),
        "ares_splits": ares.get("splits"),
        "objective": {name: p.get("objective") for name, p in policies.items()},
        "accuracy": {name: p.get("final_accuracy") for name, p in policies.items()},
    }
    for other, ratios in summary.get("ares_vs", {}).items():
        row[other] = ratios
    return row


def _pct(change: float | None) -> str:
    # ares_vs holds relative changes (ARES - other) / other; shown as ARES's saving.
    return "—" if change is None else f"{-100 * change:+.1f}%"


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| link | wire | ARES cuts | time vs fl | energy vs fl | time vs sl-best | "
        "energy vs sl-best | objective ares / fl / sl-best | best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        fl, sl = row.get("fl", {}), row.get("sl-best", {})
        objective = " / ".join(
            "—" if row["objective"].get(p) is None else f"{row['objective'][p]:.3f}"
            for p in ("ares", "fl", "sl-best")
        )
        lines.append(
            f"| {row['rate']:g} Mbit/s | {row['dtype']} | {row['ares_splits']} | "
            f"{_pct(fl.get('time'))} | {_pct(fl.get('energy'))} | {_pct(sl.get('time'))} | "
            f"{_pct(sl.get('energy'))} | {objective} | {row['best']} |"
        )
    lines.append("")
    lines.append("Percentages are ARES's savings (positive: ARES took less time or energy).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
