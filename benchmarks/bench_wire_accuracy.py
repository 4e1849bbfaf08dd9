"""What the wire format costs in accuracy: the same run (seed, shards, data order, cut) with
float32, float16, int8 and int4 activations and gradients, quantised gradients with and without
error feedback (``grad_error_feedback``), and the device part's weights as int8 or int4 deltas
(``weight_wire``; every other case sends them in float32).

A real edge and device agents in one event loop over the in-memory broker (no network: the
bytes are the same, the timing is not the point), on the bundled digits, or on CIFAR-10 where a
local copy is given (``--dataset cifar10 --data-dir DIR``; without one the bench says so and
runs nothing: no download, ever). With the same seed a
float32 run is reproducible to the bit, so each difference against it is the format's alone.
Prints final accuracy per format and seed, and the mean difference against float32.

    python benchmarks/bench_wire_accuracy.py [--rounds 4] [--seeds 0,1,2] [--split 1]
    python benchmarks/bench_wire_accuracy.py --split 5 --devices 3 --cases float32,w:int8-delta
    python benchmarks/bench_wire_accuracy.py --dataset cifar10 --data-dir ~/data --model vgg5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from device_agent import DeviceAgent, DeviceSettings
from edge_service import EdgeService, EdgeSettings
from splitnn.data import DatasetError
from splitnn.datasets import load_dataset
from transport import MemoryBroker

HANG_S = 600.0
# (name, activations' and gradients' wire, error feedback on gradients, weight wire)
CASES: tuple[tuple[str, str, bool, str], ...] = (
    ("float32", "float32", False, "float32"),
    ("float16", "float16", False, "float32"),
    ("int8", "int8", False, "float32"),
    ("int8+ef", "int8", True, "float32"),
    ("int4", "int4", False, "float32"),
    ("int4+ef", "int4", True, "float32"),
    ("w:int8-delta", "float32", False, "int8-delta"),
    ("w:int4-delta", "float32", False, "int4-delta"),
    ("int8+w:int8-delta", "int8", False, "int8-delta"),
)


async def run(
    args: argparse.Namespace, seed: int, wire: str, feedback: bool, weight_wire: str
) -> float:
    broker = MemoryBroker()
    settings = EdgeSettings(
        policy="sl", split=args.split, rounds=args.rounds, batch_size=args.batch_size,
        min_devices=args.devices, checkpoint=None, torch_threads=1, compute_workers=2,
        registration_timeout_s=HANG_S, profile_timeout_s=HANG_S, seed=seed,
        wire_dtype=wire, grad_error_feedback=feedback, dataset=args.dataset,
        data_dir=args.data_dir, model=args.model, weight_wire=weight_wire,
    )  # fmt: skip
    edge = EdgeService(settings, connect=broker.connect)
    agents = [
        DeviceAgent(
            DeviceSettings(
                device_id=f"dev-{i}",
                shard_index=i,
                num_shards=args.devices,
                exit_on_finish=True,
                torch_threads=1,
                seed=seed,
                dataset=args.dataset,
                data_dir=args.data_dir,
            ),
            connect=broker.connect,
        )
        for i in range(args.devices)
    ]
    async with asyncio.timeout(HANG_S), asyncio.TaskGroup() as tasks:
        for agent in agents:
            tasks.create_task(agent.run())
        report = await edge.run()
    assert report.final_accuracy is not None
    return report.final_accuracy


async def main(args: argparse.Namespace) -> None:
    try:  # say which data ran, and never fall back to another quietly
        load_dataset(args.dataset, "test", data_dir=args.data_dir)
    except DatasetError as exc:
        print(f"{args.dataset} not run: {exc}")
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    cases = [c for c in CASES if c[0] in args.cases.split(",")] if args.cases else list(CASES)
    results: dict[str, list[float]] = {name: [] for name, *_ in cases}
    print(f"{args.dataset} ({args.model}), {args.devices} device(s), cut {args.split}, "
          f"{args.rounds} rounds, batch {args.batch_size}, seeds {seeds}")  # fmt: skip
    for seed in seeds:
        for name, wire, feedback, weight_wire in cases:
            began = time.perf_counter()
            accuracy = await run(args, seed, wire, feedback, weight_wire)
            results[name].append(accuracy)
            print(f"  seed {seed} {name:17s} final accuracy {accuracy:.4f} "
                  f"({time.perf_counter() - began:.1f} s)", flush=True)  # fmt: skip
    print(f"{'format':17s} {'mean acc':>9s} {'vs float32 (points)':>22s}  per seed")
    base = results.get("float32")
    for name, accuracies in results.items():
        diffs: Any = "-"
        if base is not None:
            deltas = [100 * (a - b) for a, b in zip(accuracies, base, strict=True)]
            diffs = f"{statistics.mean(deltas):+.2f} [{min(deltas):+.2f}, {max(deltas):+.2f}]"
        print(f"{name:17s} {statistics.mean(accuracies):9.4f} {diffs:>22s}  "
              + " ".join(f"{a:.4f}" for a in accuracies))  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--split", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", type=Path, help="a local dataset's directory (cifar10)")
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--cases", default="", help="comma-separated subset of " +
                        ",".join(c[0] for c in CASES))  # fmt: skip
    asyncio.run(main(parser.parse_args()))
