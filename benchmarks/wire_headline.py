"""Where the paper's headline lies at 20 Mbit/s, by the cost model: ARES choosing a wire format
with each cut against federated learning, for each set of formats it may choose from.

For the paper's round (batch 100, 50 batches) and the bench's (batch 20, 10 batches), at alpha 1
(time only), 0 (energy only) and 0.5: the plan's predicted round time and device energy against
fl's, and the cuts and formats it picks. Codec times are this host's (splitnn.codec_profile).
Pure cost model: no broker, no training. ``--weight-scale`` prices the weights' transfer at that
fraction of float32 (compressed weight deltas; it applies to fl too).

    .venv/bin/python benchmarks/wire_headline.py [--link-mbps 20] [--weight-scale 1.0]
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TypeVar

from benchutil import print_table

from edge_service.wire_options import wire_options
from planner import plan_for_cuts, solve_with_formats, wire_tables
from planner.paper import BATCH_SIZE, paper_testbed, vgg5_model
from planner.profiles import DeviceProfile, ServerProfile
from schemas.messages import WIRE_DTYPES, WireDtype
from splitnn.codec_profile import measure_codec_costs

ROUNDS = (("paper: batch 100, 50 batches", 100, 50), ("bench: batch 20, 10 batches", 20, 10))
T = TypeVar("T", DeviceProfile, ServerProfile)
FORMAT_SETS: tuple[tuple[WireDtype, ...], ...] = (
    ("float32",),
    ("float32", "float16"),
    ("float32", "int8"),
    WIRE_DTYPES,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--link-mbps", type=float, default=20.0)
    parser.add_argument("--weight-scale", type=float, default=1.0)
    args = parser.parse_args()
    codec = {f: c.total_s_per_mb for f, c in measure_codec_costs(WIRE_DTYPES).items()}
    print("codec, encode + decode ms per MB:", {f: round(1e3 * s, 2) for f, s in codec.items()})
    rows = []
    for label, batch, batches in ROUNDS:
        devices, server, _ = paper_testbed(args.link_mbps, batch * batches)
        # The paper's block times are per batch of 100; they grow about linearly with the batch.
        devices = tuple(_per_batch(d, batch / BATCH_SIZE) for d in devices)
        server = _per_batch(server, batch / BATCH_SIZE)
        model = dataclasses.replace(vgg5_model(batch), sync_weights=True)
        if args.weight_scale != 1.0:
            devices = tuple(dataclasses.replace(d, weight_scale=args.weight_scale) for d in devices)
        for formats in FORMAT_SETS:
            options = {
                d.device_id: wire_options(
                    configured="float32", candidates=formats, supported=WIRE_DTYPES,
                    blocks=model.num_blocks, accuracy=None if len(formats) == 1 else _AllWithin(),
                    bound_points=1.0, edge_codec_s_per_mb=codec, device_codec_s_per_mb=None,
                )
                for d in devices
            }  # fmt: skip
            wire = wire_tables(devices, server, model, {k: v for k, v in options.items() if v})
            for alpha in (1.0, 0.0, 0.5):
                plan = solve_with_formats(wire, alpha)
                fl = plan_for_cuts(wire.base, alpha, model.num_blocks)
                rows.append(
                    (
                        label, "+".join(formats), f"{alpha:g}",
                        " ".join(str(c) for c in plan.cuts.values()),
                        " ".join(plan.formats[d][:5] for d in plan.cuts),
                        f"{plan.max_time_s:.1f}", f"{fl.max_time_s:.1f}",
                        f"{100 * (plan.max_time_s / fl.max_time_s - 1):+.1f}%",
                        f"{100 * (plan.total_energy_j / fl.total_energy_j - 1):+.1f}%",
                    )
                )  # fmt: skip
    print_table(
        ("round", "formats allowed", "alpha", "cuts", "wire", "ares s", "fl s", "time vs fl",
         "energy vs fl"),
        rows,
    )  # fmt: skip


def _per_batch(board: T, factor: float) -> T:
    return dataclasses.replace(
        board,
        forward_s=tuple(factor * t for t in board.forward_s),
        backward_s=tuple(factor * t for t in board.backward_s),
    )


class _AllWithin:
    """Every format within the bound at every cut (the cost model alone; the edge measures it)."""

    def allowed(self, cut: int, fmt: str, bound_points: float) -> bool:
        return True

    def why_not(self, cut: int, fmt: str, bound_points: float) -> str:
        return ""


if __name__ == "__main__":
    main()
