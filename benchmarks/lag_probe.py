"""A control for bench_edge_scale.py: the loop lag of an asyncio process that does nothing else.

On a shared machine the edge's loop lag mixes its own stalls with the operating system's
(other processes holding both cores). This process runs the same LoopLagMonitor on an idle
uvloop loop; whatever lag it sees is the machine's, not the edge's. Until SIGTERM it files
samples with the time they were collected (every 100 ms), then writes them as JSON pairs
``[time.monotonic(), lag_s]``.

    python benchmarks/lag_probe.py --out probe.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path

import runtime
from edge_service.loop_lag import LoopLagMonitor

COLLECT_EVERY_S = 0.1


async def probe(samples: list[tuple[float, float]], interval_s: float) -> None:
    seen = 0
    async with LoopLagMonitor(interval_s=interval_s, window=10_000) as monitor:
        while True:
            await asyncio.sleep(COLLECT_EVERY_S)
            now = time.monotonic()
            samples.extend((now, lag) for lag in monitor.since(seen))
            seen = monitor.total_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interval-s", type=float, default=0.01)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    samples: list[tuple[float, float]] = []
    with contextlib.suppress(asyncio.CancelledError):  # SIGTERM: the orchestrator is done
        runtime.run(lambda: probe(samples, args.interval_s))
    args.out.write_text(json.dumps(samples))


if __name__ == "__main__":
    main()
