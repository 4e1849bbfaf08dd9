"""What every benchmark here shares: machine facts, percentiles, CPU time of a process, output.

Deliberately light (no torch, no numpy): the benchmarks' helper processes import it too.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, p99 and maximum of ``values``; NaN when empty."""
    return {
        "n": len(values),
        "median": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else math.nan,
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a live process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" of the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_info() -> dict[str, Any]:
    """Facts that make numbers comparable: CPU, cores, load, kernel, versions."""
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }
    try:
        from broker.binary import find_mosquitto

        done = subprocess.run(
            [find_mosquitto(), "-h"], capture_output=True, text=True, timeout=5, check=False
        )
        info["mosquitto"] = (done.stdout or done.stderr).splitlines()[0].strip()
    except Exception as exc:  # informative only
        info["mosquitto"] = f"unknown ({exc})"
    return info


def print_machine(info: dict[str, Any]) -> None:
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, load {info['load_average_1m']} "
        f"(1 min), kernel {info['kernel']}, Python {info['python']}, {info['mosquitto']}"
    )


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain right-aligned text table."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(value.rjust(width) for value, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")
    print(f"numbers written to {path}")


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft limit on open files towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft
