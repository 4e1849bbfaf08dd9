"""The paper's testbed for serving: what the cost model predicts, before anything is measured.

Measured (planner.paper, design notes section 2): VGG5's per-block forward times of the Raspberry
Pi 3B+ and the Jetson Nano (batch 100, divided by 100 for one request: per-sample times at batch
1 are longer on real boards, which favours the edge), board power, the edge at 1/20 of the Nano,
20 Mbit/s links. Assumed here, and only a plausible stand-in for what calibration will measure:

- Exits after block 2 (the first max-pool, 32x16x16) and block 4 (the second, 64x8x8): global
  average pooling and a linear layer each. A head costs a quarter of the preceding max-pool's time
  (it reads the pooled output, a quarter of the max-pool's input) and its weights are its linear
  layer's.
- The table (:data:`VGG5_EXIT_RATES`): at threshold 0.9, 25% of requests leave at exit 2 and 35%
  at exit 4 (60% in all) for 0.8 points of accuracy (full model 80%, the paper's); lower
  thresholds let more out for more loss. Alone, exit 2 answers 55% right and exit 4 70%.
- A request is one float32 CIFAR-10 image (12,288 bytes); the answer 64 bytes; Theta 5 ms.

What the cost model predicts with these (``tests/planner/test_inference_paper.py`` checks it),
mean per request over the five boards at 20 Mbit/s: at alpha 0.5, ``ares`` (the Pi on the edge,
the Nanos at cut 7 with exits at 0.9) 3.25 ms and 5.43 mJ against ``sl-best``'s (cut 0, the
edge, for all) 10.0 ms and 8.90 mJ: -67.5% latency, -38.9% energy, accuracy 79.4% against 80%;
at alpha 0.2, -63.0% and -41.4%. Predictions of the cost model, not measurements.
"""

from __future__ import annotations

from planner.inference.points import ExitTable, OperatingPoint
from planner.inference.problem import ServingInputs
from planner.inference.profiles import DEFAULT_OVERHEAD_S, ServingDevice, ServingEdge, ServingModel
from planner.paper import (
    BATCH_SIZE,
    FLOAT32_BYTES,
    VGG5_OUTPUT_ELEMENTS,
    VGG5_PARAM_FLOATS,
    paper_testbed,
)
from planner.profiles import DeviceProfile

__all__ = [
    "VGG5_EXIT_POSITIONS",
    "VGG5_EXIT_RATES",
    "serving_device",
    "serving_testbed",
    "vgg5_exit_table",
    "vgg5_serving_model",
]

VGG5_EXIT_POSITIONS = (2, 4)
FULL_ACCURACY = 0.80
# threshold: (share leaving at exit 2, at exit 4, accuracy lost by exit 2's answers, by exit 4's)
VGG5_EXIT_RATES: dict[float, tuple[float, float, float, float]] = {
    0.5: (0.55, 0.30, 0.028, 0.032),
    0.7: (0.40, 0.35, 0.011, 0.014),
    0.8: (0.32, 0.36, 0.006, 0.009),
    0.9: (0.25, 0.35, 0.003, 0.005),
    0.95: (0.18, 0.32, 0.001, 0.002),
    0.99: (0.08, 0.22, 0.0002, 0.0003),
}
EXIT_ALONE_ACCURACY = {2: 0.55, 4: 0.70}
HEAD_SHARE_OF_POOL = 0.25
CLASSES = 10


def vgg5_exit_table() -> ExitTable:
    """The assumed exit table (module docstring) for every cut and threshold."""
    blocks = len(VGG5_OUTPUT_ELEMENTS)
    points = []
    for threshold, (at2, at4, lost2, lost4) in VGG5_EXIT_RATES.items():
        for cut in range(2, blocks + 1):
            fractions = {2: at2} if cut < 4 else {2: at2, 4: at4}
            lost = lost2 if cut < 4 else lost2 + lost4
            points.append(OperatingPoint(cut, threshold, fractions, FULL_ACCURACY - lost))
    deepest: dict[int, float | None] = {cut: None for cut in range(2)}
    deepest.update({cut: EXIT_ALONE_ACCURACY[2] for cut in (2, 3)})
    deepest.update({cut: EXIT_ALONE_ACCURACY[4] for cut in range(4, blocks)})
    deepest[blocks] = FULL_ACCURACY
    return ExitTable(
        num_blocks=blocks,
        points=tuple(points),
        full_accuracy=FULL_ACCURACY,
        exit_positions=VGG5_EXIT_POSITIONS,
        deepest_exit_accuracy=deepest,
    )


def vgg5_serving_model() -> ServingModel:
    """VGG5's per-sample sizes, float32, with the two exit heads' weights."""
    channels = {2: 32, 4: 64}
    return ServingModel(
        input_bytes=3 * 32 * 32 * FLOAT32_BYTES,
        activation_bytes=tuple(n * FLOAT32_BYTES for n in VGG5_OUTPUT_ELEMENTS),
        answer_bytes=64,
        param_bytes=tuple(n * FLOAT32_BYTES for n in VGG5_PARAM_FLOATS),
        exit_param_bytes={p: (c * CLASSES + CLASSES) * FLOAT32_BYTES for p, c in channels.items()},
    )


def serving_device(
    board: DeviceProfile, *, overhead_s: float = DEFAULT_OVERHEAD_S
) -> ServingDevice:
    """A training profile's board as a serving device: per-sample forward times (batch time /
    batch size), exit heads priced as in the module docstring, its power, link and memory."""
    forward = tuple(t / BATCH_SIZE for t in board.forward_s)
    return ServingDevice(
        device_id=board.device_id,
        forward_s=forward,
        power=board.power,
        uplink_bps=board.uplink_bps,
        downlink_bps=board.downlink_bps,
        exit_head_s={p: HEAD_SHARE_OF_POOL * forward[p - 1] for p in VGG5_EXIT_POSITIONS},
        battery_fraction=board.battery_fraction,
        overhead_s=overhead_s,
        memory_bytes=board.memory_bytes,
    )


def serving_testbed(uplink_mbps: float = 20.0, *, alpha: float = 0.5) -> ServingInputs:
    """The paper's five boards serving VGG5 over ``uplink_mbps`` links, with the assumed exits."""
    boards, server, _ = paper_testbed(uplink_mbps)
    return ServingInputs(
        devices=tuple(serving_device(board) for board in boards),
        edge=ServingEdge(tuple(t / BATCH_SIZE for t in server.forward_s)),
        model=vgg5_serving_model(),
        exits=vgg5_exit_table(),
        alpha=alpha,
    )
