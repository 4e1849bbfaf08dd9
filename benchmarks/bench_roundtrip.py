"""Batch round trip through a real Mosquitto: activations up, gradient down.

Runs `ares demo` (broker, edge and device as separate processes) for a few configurations and
prints, per configuration, the median time a device waits from publishing a batch's activations
to holding its gradient (server compute included), the edge's compute per batch, and the bytes
each way. Also times the frame codec alone.

    python benchmarks/bench_roundtrip.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from schemas import decode_frame, encode_frame

CONFIGS = [
    # model, dataset, cut, batch size, devices
    ("small_cnn", "digits", 2, 32, 1),
    ("small_cnn", "digits", 2, 32, 3),
    ("vgg5", "synthetic", 5, 100, 1),
    ("vgg5", "synthetic", 1, 100, 1),
]
ACT_ELEMENTS = {("small_cnn", 2): 32 * 8 * 8, ("vgg5", 5): 4096, ("vgg5", 1): 32768}


def run_config(model: str, dataset: str, cut: int, batch: int, devices: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        command = [
            sys.executable, "-m", "ares", "demo", "--devices", str(devices),
            "--rounds", str(rounds), "--model", model, "--dataset", dataset, "--split", str(cut),
            "--batch-size", str(batch), "--batches-per-round", "20",
            "--run-dir", tmp, "--report", str(report_path),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=900)
        report = json.loads(report_path.read_text())
    # Round 1 pays one-off costs (first allocations, connection warm-up): report the rest.
    entries = [d for r in report["rounds"][1:] for d in r["devices"].values()]
    rtt = statistics.median(d["rtt_median_s"] for d in entries)
    server = statistics.median(d["server_s"] / d["batches"] for d in entries)
    act_bytes = ACT_ELEMENTS[(model, cut)] * batch * 4
    print(
        f"{model:<10} {dataset:<10} cut {cut}  batch {batch:>3}  devices {devices}  "
        f"act {act_bytes / 1e6:6.2f} MB  round trip median {rtt * 1e3:7.2f} ms  "
        f"(edge compute {server * 1e3:6.2f} ms)"
    )


def bench_codec() -> None:
    for size in (64 * 1024, 4 * 1024 * 1024):
        array = np.random.default_rng(0).random(size // 4, dtype=np.float32)
        payload = encode_frame({"round": 1, "seq": 0}, {"act": array})
        repeats = 200
        began = time.perf_counter()
        for _ in range(repeats):
            encode_frame({"round": 1, "seq": 0}, {"act": array})
        encode_s = (time.perf_counter() - began) / repeats
        began = time.perf_counter()
        for _ in range(repeats):
            decode_frame(payload)
        decode_s = (time.perf_counter() - began) / repeats
        print(
            f"codec {size / 1024:7.0f} KiB: encode {encode_s * 1e3:.3f} ms, "
            f"decode {decode_s * 1e3:.4f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bench_codec()
    for config in CONFIGS:
        run_config(*config, rounds=args.rounds)


if __name__ == "__main__":
    main()
