"""What weight deltas save and lose: the device part's weights per round in float32 against int8
and int4 deltas (``schemas.weight_delta``, the ``weight_wire`` setting), at every cut.

One round of the paper's training (batch 100, SGD lr 0.01 momentum 0.9, ``--batches`` batches)
on the synthetic CIFAR-shaped set moves the model from its start, as a device's part moves in a
round. Per cut (the device part: blocks before it):

- bytes of the weights as their frames carry them (headers, scales and zero points included),
  down (the round start: deltas against the start the device holds) plus up (the part: deltas
  against this round's start), in a steady round; the first round a device takes part in sends
  its start whole (``first round``);
- the rebuilt part's error, ``||rebuilt - trained|| / ||trained - start||`` over its float
  tensors (up, one round; down is the same arithmetic against the average);
- encode (delta, quantise, frame) and decode (unframe, dequantise, add) time of the part.

No broker, no network: sizes are exact, times are this machine's.

    python benchmarks/weight_delta_costs.py [--model vgg5] [--batches 50] [--cuts 1,2,3,4,5,6,7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from benchutil import print_table

from schemas import decode_frame, encode_frame
from schemas.quantization import QuantFormat
from schemas.weight_delta import apply_weights, encode_weights
from splitnn.datasets import load_dataset
from splitnn.models import ModelSpec, build_model, num_blocks
from splitnn.partition import block_index
from splitnn.tensors import state_to_arrays

FORMATS: tuple[tuple[str, QuantFormat | None], ...] = (
    ("float32", None),
    ("int8-delta", "int8"),
    ("int4-delta", "int4"),
)


def one_round(spec: ModelSpec, batches: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(start, trained): the full model's state before and after a round of training."""
    torch.manual_seed(seed)
    model = build_model(spec)
    start = {k: v.copy() for k, v in state_to_arrays(model.state_dict()).items()}
    data = load_dataset("synthetic", "train", seed=seed, synthetic_size=100 * batches)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    model.train()
    for i in range(batches):
        optimizer.zero_grad()
        loss_fn(model(x[100 * i : 100 * (i + 1)]), y[100 * i : 100 * (i + 1)]).backward()
        optimizer.step()
    return start, {k: v.copy() for k, v in state_to_arrays(model.state_dict()).items()}


def part(state: dict[str, Any], cut: int) -> dict[str, Any]:
    return {k: v for k, v in state.items() if block_index(k) < cut}


def frame_bytes(
    values: dict[str, Any], base: dict[str, Any] | None, fmt: QuantFormat | None
) -> int:
    return len(encode_frame({}, encode_weights(values, base, fmt).tensors))


def measure(spec: ModelSpec, cuts: list[int], batches: int, repeats: int) -> list[list[Any]]:
    start, trained = one_round(spec, batches, seed=0)
    rows: list[list[Any]] = []
    for cut in cuts:
        base, moved = part(start, cut), part(trained, cut)
        whole = frame_bytes(moved, None, None)
        row: list[Any] = [cut, sum(v.size for v in moved.values()), 2 * whole / 1e3]
        for _, fmt in FORMATS[1:]:
            delta = frame_bytes(moved, base, fmt)  # a round's change, either way
            steady, first = 2 * delta, whole + delta
            encode_s, decode_s = [], []
            rebuilt: dict[str, Any] = {}
            for _ in range(repeats):
                began = time.perf_counter()
                payload = encode_frame({}, encode_weights(moved, base, fmt).tensors)
                middle = time.perf_counter()
                frame = decode_frame(payload)
                rebuilt = apply_weights({**frame.tensors, **frame.quantized}, base)
                ended = time.perf_counter()
                encode_s.append(middle - began)
                decode_s.append(ended - middle)
            floats = [k for k, v in moved.items() if v.dtype == np.float32]
            error = np.sqrt(sum(np.sum((rebuilt[k] - moved[k]) ** 2.0) for k in floats))
            change = np.sqrt(sum(np.sum((moved[k] - base[k]) ** 2.0) for k in floats))
            row += [
                steady / 1e3,
                f"{steady / (2 * whole):.3f}",
                first / 1e3,
                f"{error / change:.4f}" if change else "-",
                1e3 * statistics.median(encode_s),
                1e3 * statistics.median(decode_s),
            ]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg5")
    parser.add_argument("--batches", type=int, default=50, help="batches of 100 in the round")
    parser.add_argument("--cuts", default="", help="comma-separated (default: every cut)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = ModelSpec(args.model, (3, 32, 32), 10)
    cuts = (
        [int(c) for c in args.cuts.split(",")]
        if args.cuts
        else list(range(1, num_blocks(spec) + 1))
    )
    round_of = f"{args.batches} batches of 100 (SGD lr 0.01 momentum 0.9) on synthetic data"
    print(f"{args.model}: the device part's weights per round (down + up), after {round_of}")
    headers = ["cut", "params", "float32 KB"]
    for name, _ in FORMATS[1:]:
        short = name.split("-")[0]
        headers += [f"{short} KB", "ratio", "1st rnd KB", "rel err", "enc ms", "dec ms"]
    print_table(headers, measure(spec, cuts, args.batches, args.repeats))


if __name__ == "__main__":
    main()
