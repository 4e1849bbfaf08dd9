"""Bandwidth sweep of a scenario: `ares bench` at several link rates and wire dtypes.

Every device's uplink (and downlink) is set to each rate in turn, once with float32 and once
with float16 activations on the wire; each point is a full `ares bench` run (its own results.json,
summary.md and plots under OUT/<rate>mbit-<dtype>/), and the sweep prints one table of ARES against
fl and sl, and writes it to OUT/sweep.md.

    python benchmarks/bench_sweep.py --out runs/sweep                     # the paper's testbed
    python benchmarks/bench_sweep.py --rates 5,100 --dtypes float16 --rounds 2 --out /tmp/s
    python benchmarks/bench_sweep.py --out runs/sweep --table-only        # re-tabulate a sweep
    python benchmarks/bench_sweep.py --out runs/sweep --rates 100 --dtypes float16 \
        --repeats 3 --only-missing                  # two more runs of a point already run once

Next to each measured saving the table shows the cost model's prediction for the same runs (the
plans' predicted round times and energies), so a gap between model and machine stands out. A
point run more than once (``--repeats``; runs 2 and on in OUT/<point>-r<k>/) shows the median of
its runs and each objective's range: on a shared machine two runs of the same plan differ by a
few percent, and one run cannot tell that from a better plan.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from statistics import median
from typing import Any

import yaml

from schemas.report import TIE, RunReport
from testbed.scenario import load_scenario


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="paper-testbed")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rates", default="5,20,50,100", help="Mbit/s, comma-separated")
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--policies", default="ares,fl,sl-best")
    parser.add_argument("--rounds", type=int, help="rounds per policy (default: the scenario's)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every point (median)")
    parser.add_argument(
        "--only-missing", action="store_true", help="skip runs whose results OUT already holds"
    )
    parser.add_argument(
        "--table-only", action="store_true", help="only rebuild the table from OUT's results"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    rates = [float(r) for r in args.rates.split(",")]
    dtypes = args.dtypes.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for dtype in dtypes:
        for rate in rates:
            runs = []
            for point in _repeats(args.out, rate, dtype, args.repeats, args.table_only):
                results = point / "results.json"
                if not (args.table_only or (args.only_missing and results.exists())):
                    _run_point(args, point, rate, dtype)
                if results.exists():
                    runs.append(_row(rate, dtype, json.loads(results.read_text())))
            if runs:
                rows.append(_merge(runs))
    table = _table(rows)
    (args.out / "sweep.md").write_text(table)
    print(table)
    return 0


def _repeats(out: Path, rate: float, dtype: str, repeats: int, found: bool) -> list[Path]:
    """The point's run directories: the first, then -r2, -r3, ... (``found``: all that exist)."""
    first = out / f"{rate:g}mbit-{dtype}"
    if found:
        more = {
            int(k): path
            for path in out.glob(f"{first.name}-r*")
            if path.is_dir() and (k := path.name.removeprefix(f"{first.name}-r")).isdigit()
        }
        return [first, *(more[k] for k in sorted(more))]
    return [first, *(out / f"{first.name}-r{k}" for k in range(2, repeats + 1))]


def _run_point(args: argparse.Namespace, point: Path, rate: float, dtype: str) -> None:
    (point / "results.json").unlink(missing_ok=True)  # a failed run must not leave an old one
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
    if code != 0 or not (point / "results.json").exists():
        print(f"   failed (exit {code}); see {point}", flush=True)


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
        "runs": 1,
        "ares_splits": _cuts(results["policies"].get("ares")),
        "ares_formats": _formats(results["policies"].get("ares")),
        "objective": {name: p.get("objective") for name, p in policies.items()},
        "objective_range": {},
        "accuracy": {name: p.get("final_accuracy") for name, p in policies.items()},
    }
    for other, ratios in summary.get("ares_vs", {}).items():
        row[other] = dict(ratios)
        row[other].update(_changes_from_rounds(results["policies"], "ares", other))
    return row


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for a point's runs: the median of every number, each objective's range."""
    if len(runs) == 1:
        return runs[0]
    merged: dict[str, Any] = {
        "rate": runs[0]["rate"],
        "dtype": runs[0]["dtype"],
        "runs": len(runs),
        "ares_splits": " / ".join(dict.fromkeys(r["ares_splits"] for r in runs)),
        "ares_formats": " / ".join(dict.fromkeys(r.get("ares_formats", "—") for r in runs)),
    }
    for key in ("objective", "accuracy", "fl", "sl-best"):
        names = dict.fromkeys(name for r in runs for name in r.get(key, {}))
        values = {n: [v for r in runs if (v := r.get(key, {}).get(n)) is not None] for n in names}
        merged[key] = {n: median(vs) if vs else None for n, vs in values.items()}
        if key == "objective":
            merged["objective_range"] = {n: (min(vs), max(vs)) for n, vs in values.items() if vs}
    return merged


def _best(objective: dict[str, float | None]) -> str:
    """The policy with the lowest objective, and whether ARES ties it (within 1%)."""
    scored = {n: o for n, o in objective.items() if o is not None}
    if not scored:
        return "—"
    best = min(scored, key=lambda n: scored[n])
    ares = scored.get("ares")
    if best != "ares" and ares is not None and ares <= scored[best] * (1 + TIE):
        return f"{best} (ares within 1%)"
    return best


def _cuts(report: dict[str, Any] | None) -> str:
    """ARES's cuts in its last round, device by device (the plan it settled on)."""
    rounds = [] if report is None else RunReport.model_validate(report).rounds
    if not rounds:
        return "—"
    devices = rounds[-1].devices
    return " ".join(str(devices[d].cut) for d in sorted(devices))


def _formats(report: dict[str, Any] | None) -> str:
    """ARES's wire format per device in its last round ("-" at cut L: nothing crosses)."""
    rounds = [] if report is None else RunReport.model_validate(report).rounds
    if not rounds:
        return "—"
    devices = rounds[-1].devices
    return " ".join(
        (devices[d].wire_dtype or "?") if devices[d].server_s > 0 else "-" for d in sorted(devices)
    )


def _changes_from_rounds(reports: dict[str, Any], name: str, other: str) -> dict[str, float | None]:
    """Relative changes of ``name`` against ``other`` from the rounds' per-device entries.

    ``predicted_time``, ``predicted_energy``: the cost model's, over the runs' plans.
    ``device_time``: the slowest device's measured round (start sent to part received) summed
    over rounds: the training time without the edge's per-round planning, aggregation and
    evaluation, which cost every policy the same.
    """

    def totals(report: dict[str, Any]) -> tuple[float, float, float]:
        rounds = RunReport.model_validate(report).rounds
        time = sum(r.predicted_time_s for r in rounds)
        energy = sum(d.predicted_energy_j for r in rounds for d in r.devices.values())
        device = sum(
            max((d.round_s or 0.0 for d in r.devices.values()), default=0.0) for r in rounds
        )
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


def _objective(row: dict[str, Any], policy: str) -> str:
    value = row["objective"].get(policy)
    if value is None:
        return "—"
    low, high = row["objective_range"].get(policy, (value, value))
    return f"{value:.3f}" if low == high else f"{value:.3f} ({low:.3f}–{high:.3f})"


def _pct(change: float | None) -> str:
    # Relative changes (ARES - other) / other, shown as ARES's saving.
    return "—" if change is None else f"{round(-100 * change):+d}%"  # an int: never "-0%"


def _saving(ratios: dict[str, Any], what: str) -> str:
    return f"{_pct(ratios.get(what))} ({_pct(ratios.get(f'predicted_{what}'))})"


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| link | wire | ARES cuts | ARES formats | time vs fl | device time vs fl | "
        "energy vs fl | time vs sl-best | energy vs sl-best | objective ares / fl / sl-best "
        "| best |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        fl, sl = row.get("fl", {}), row.get("sl-best", {})
        objective = " / ".join(_objective(row, p) for p in ("ares", "fl", "sl-best"))
        runs = f" ({row['runs']} runs)" if row["runs"] > 1 else ""
        lines.append(
            f"| {row['rate']:g} Mbit/s{runs} | {row['dtype']} | {row['ares_splits']} | "
            f"{row.get('ares_formats', '—')} | "
            f"{_saving(fl, 'time')} | {_pct(fl.get('device_time'))} | "
            f"{_saving(fl, 'energy')} | {_saving(sl, 'time')} | "
            f"{_saving(sl, 'energy')} | {objective} | {_best(row['objective'])} |"
        )
    lines.append("")
    lines.append(
        "Percentages are ARES's measured savings (positive: ARES took less time or energy), "
        "and in brackets the cost model's prediction for the same runs. Time: the rounds at "
        "the edge; device time: the slowest device's rounds (start sent to part received), "
        "without the edge's per-round aggregation and evaluation, which the cost model leaves "
        "out. ARES cuts and formats: its last round's per device, devices in alphabetical order "
        "(wire: the baselines' format, ARES's first choice; '-': nothing crosses at that cut). "
        "A point run several times shows medians, each objective's range in brackets. Best: "
        'the lowest objective; "ares within 1%" marks a tie on a shared machine.'
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
