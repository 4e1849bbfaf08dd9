"""The edge's time per round outside the devices' work, from run reports.

A round's ``duration_s`` runs from the edge planning it to the edge holding its average (until
the evaluation moved behind the next round, also its evaluation and checkpoint); each device's
``round_s`` runs from its round start being sent to its part being received. What the slowest
device does not cover is the edge's own work on the critical path: planning, cutting the parts,
sending the starts, averaging (and, before, evaluating and persisting).

    python benchmarks/round_overhead.py RUN_DIR/runs/ares/report.json [...]
    python benchmarks/round_overhead.py BENCH_OUT   # every policy's report in an ares bench
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from schemas.report import RoundReport, RunReport


def overhead_s(entry: RoundReport) -> float | None:
    """The round's time outside its slowest device's round trip (None: no device timed)."""
    times = [d.round_s for d in entry.devices.values() if d.round_s is not None]
    return entry.duration_s - max(times) if times else None


def reports(paths: list[Path]) -> list[tuple[str, RunReport]]:
    found: list[tuple[str, RunReport]] = []
    for path in paths:
        files = sorted(path.glob("runs/*/report.json")) if path.is_dir() else [path]
        for file in files:
            found.append((file.parent.name, RunReport.model_validate_json(file.read_text())))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="report.json files or bench outputs")
    args = parser.parse_args(argv)
    found = reports(args.paths)
    if not found:
        print("no report found", file=sys.stderr)
        return 1
    print("| run | round | duration s | slowest device s | edge overhead s |")
    print("|---|---:|---:|---:|---:|")
    for name, report in found:
        overheads = []
        for entry in report.rounds:
            overhead = overhead_s(entry)
            slowest = None if overhead is None else entry.duration_s - overhead
            shown = "-" if overhead is None else f"{overhead:.3f}"
            print(f"| {name} | {entry.round} | {entry.duration_s:.2f} | "
                  f"{'-' if slowest is None else f'{slowest:.2f}'} | {shown} |")  # fmt: skip
            if overhead is not None:
                overheads.append(overhead)
        if overheads:
            print(f"| {name} | mean | | | **{statistics.fmean(overheads):.3f}** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
