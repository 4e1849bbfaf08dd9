"""The wire formats' CPU cost and size: encode (cast or quantise, then frame) and decode (unframe,
then dequantise to float32) of one activation tensor per format, per MB of its float32 values,
and the bytes on the wire per element (the whole frame: header, scales, zero points, codes).

Part (d) of bench_transport.py; no broker, no network.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import numpy as np
from benchutil import print_table

from schemas import decode_frame, encode_frame, from_wire, to_wire
from schemas.messages import WIRE_DTYPES

MB = 1e6
# (label, shape): VGG5's activation at cut 1 for a batch of 100 (the paper's), and the demo's
# small CNN at cut 1 for a batch of 32.
TENSORS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("vgg5 cut 1, batch 100", (100, 32, 32, 32)),
    ("small_cnn cut 1, batch 32", (32, 16, 8, 8)),
)


@dataclass(frozen=True)
class FormatCost:
    tensor: str
    format: str
    elements: int
    frame_bytes: int
    encode_s: float  # median
    decode_s: float  # median
    max_error: float  # the largest |x - decoded| over the tensor

    @property
    def bytes_per_element(self) -> float:
        return self.frame_bytes / self.elements

    @property
    def encode_ms_per_mb(self) -> float:
        return 1e3 * self.encode_s / (4 * self.elements / MB)

    @property
    def decode_ms_per_mb(self) -> float:
        return 1e3 * self.decode_s / (4 * self.elements / MB)


def measure(repeats: int) -> list[FormatCost]:
    rng = np.random.default_rng(0)
    results: list[FormatCost] = []
    for label, shape in TENSORS:
        # ReLU-like activations: half zeros, the rest positive with a long tail.
        x = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0) * 2.0
        for fmt in WIRE_DTYPES:
            encode_s, decode_s = [], []
            payload, decoded = b"", x
            for _ in range(repeats):
                began = time.perf_counter()
                payload = encode_frame({}, {"act": to_wire(x, fmt)})
                middle = time.perf_counter()
                tensor = decode_frame(payload).tensor("act")
                assert tensor is not None
                decoded = np.asarray(from_wire(tensor), dtype=np.float32)
                ended = time.perf_counter()
                encode_s.append(middle - began)
                decode_s.append(ended - middle)
            results.append(
                FormatCost(
                    tensor=label,
                    format=fmt,
                    elements=math.prod(shape),
                    frame_bytes=len(payload),
                    encode_s=statistics.median(encode_s),
                    decode_s=statistics.median(decode_s),
                    max_error=float(np.abs(decoded - x).max()),
                )
            )
    return results


def print_costs(results: list[FormatCost]) -> None:
    print("\n(d) wire formats: encode (cast or quantise + frame) and decode (unframe + float32),")
    print("    median ms per MB of float32 values; bytes per element of the whole frame")
    print_table(
        ["tensor", "format", "frame KB", "B/element", "encode ms/MB", "decode ms/MB", "max err"],
        [
            [
                r.tensor,
                r.format,
                r.frame_bytes / 1e3,
                f"{r.bytes_per_element:.4f}",
                r.encode_ms_per_mb,
                r.decode_ms_per_mb,
                r.max_error,
            ]
            for r in results
        ],
    )
