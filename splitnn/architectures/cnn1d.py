"""A 1-D CNN for sensor time series: windows of C channels by T steps (accelerometer, IMU, ECG).

The usual shape of the human-activity-recognition CNNs: four Conv1d-BN-ReLU layers (kernel 5,
32-64-128-128 channels), the first three each followed by a 2-fold max pool, then a global
average pool over time and a linear classifier. The pool makes the model indifferent to T (any
T >= 8, the downsampling); about 135k parameters for 3 channels.

Blocks (5; each a cut candidate): the four convolution layers, each with its pool, and the head
(global average pool, flatten, linear). Cutting after a pooled block halves the activation each
time, the trade the planner weighs against the device's compute.
"""

from __future__ import annotations

from torch import nn

from splitnn.architectures._shared import pooled_classifier, require_input
from splitnn.model_registry import register_model
from splitnn.models import ModelSpec

# (output channels, max-pool after it)
_LAYERS = ((32, True), (64, True), (128, True), (128, False))
_KERNEL = 5
_DOWNSAMPLING = 2 ** sum(pool for _, pool in _LAYERS)


def _conv_block(in_channels: int, out_channels: int, *, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv1d(in_channels, out_channels, _KERNEL, padding=_KERNEL // 2, bias=False),
        nn.BatchNorm1d(out_channels),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool1d(2))
    return nn.Sequential(*layers)


def build_cnn1d(spec: ModelSpec) -> list[nn.Module]:
    """The 5 blocks of the 1-D CNN for ``spec.input_shape`` = (C, T), T >= 8."""
    require_input(spec, dims=("steps",), min_size=_DOWNSAMPLING)
    blocks: list[nn.Module] = []
    channels = spec.in_channels
    for out_channels, pool in _LAYERS:
        blocks.append(_conv_block(channels, out_channels, pool=pool))
        channels = out_channels
    blocks.append(pooled_classifier(channels, spec.num_classes, dims=1))
    return blocks


register_model(
    "cnn1d",
    build_cnn1d,
    input_rank=2,
    description="1-D CNN for sensor series (C x T): 4 conv blocks, global pool, linear",
)
