"""Time planner.solve (and planner.stabilise) on random cost tables.

Run: ``python benchmarks/bench_planner.py [--runs 20] [--seed 0]``. Prints measured numbers only.
Tables: times and energies uniform in [1, 100), 10 % of the cells infeasible (cut 1 kept feasible
so every device has a cut), mains power; alpha = 0.5.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from planner import CostTable, Plan, solve, stabilise

SIZES = ((1000, 30), (100, 10), (6, 8))


def random_table(devices: int, cuts: int, rng: np.random.Generator) -> CostTable:
    time_s = rng.uniform(1.0, 100.0, size=(devices, cuts))
    energy_j = rng.uniform(1.0, 100.0, size=(devices, cuts))
    blocked = rng.random((devices, cuts)) < 0.1
    blocked[:, 0] = False
    time_s[blocked] = np.inf
    energy_j[blocked] = np.inf
    return CostTable.from_arrays(time_s, energy_j)


def measure(call: Callable[[], Plan], runs: int) -> list[float]:
    call()  # warm-up: first-call imports and allocations are not what we measure
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    alpha = 0.5
    print(f"numpy {np.__version__}, {args.runs} runs per size, alpha {alpha}")
    print(f"{'devices x cuts':>15} {'call':>10} {'median ms':>10} {'min ms':>10}")
    for devices, cuts in SIZES:
        table = random_table(devices, cuts, rng)
        previous = solve(table, alpha).cuts
        shifted = CostTable.from_arrays(
            table.time_s * rng.uniform(0.9, 1.1, table.time_s.shape),
            table.energy_j * rng.uniform(0.9, 1.1, table.energy_j.shape),
        )
        candidate = solve(shifted, alpha)
        calls: dict[str, Callable[[], Plan]] = {
            "solve": partial(solve, table, alpha),
            "stabilise": partial(stabilise, previous, candidate, shifted, alpha),
        }
        for name, call in calls.items():
            samples = measure(call, args.runs)
            print(
                f"{f'{devices} x {cuts}':>15} {name:>10} "
                f"{1e3 * statistics.median(samples):>10.3f} {1e3 * min(samples):>10.3f}"
            )


if __name__ == "__main__":
    main()
