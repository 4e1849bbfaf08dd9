"""MobileNetV2 (Sandler et al., CVPR 2018) in its 32x32 (CIFAR) variant, width multiplier 1.0.

The CIFAR adaptation (as in kuangliu/pytorch-cifar) keeps the ImageNet network but sets the
first two downsampling strides to 1 (the stem convolution and the first 24-channel block), so a
32x32 image is downsampled 8-fold (32 -> 4) instead of 32-fold. Unlike that repository, a block
whose input and output differ adds no shortcut: the residual is the paper's, only where stride
is 1 and the channels match. About 2.24M parameters for 10 classes.

Blocks (20; each a cut candidate): the stem (3x3 conv-BN-ReLU6, 32 channels), each of the 17
inverted-residual blocks on its own, the final 1x1 conv-BN-ReLU6 (1280 channels) and the head
(global average pool, flatten, linear). The inverted-residual blocks are not grouped into their
seven stages: a block's skip connection never crosses its boundary, so every block boundary is a
natural cut, and within a stage the cuts have the same activation size but split the compute
differently, which is what the planner trades against the link.
"""

from __future__ import annotations

from torch import Tensor, nn

from splitnn.architectures._shared import pooled_classifier, require_input
from splitnn.model_registry import register_model
from splitnn.models import ModelSpec

# (expansion t, output channels c, repeats n, first block's stride s), the paper's Table 2 with
# the CIFAR strides: the 24-channel stage's stride is 1 here (2 on ImageNet).
_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM_CHANNELS = 32
_LAST_CHANNELS = 1280
_DOWNSAMPLING = 8  # the product of the strides above


def _conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    groups: int = 1,
    activation: bool = True,
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    ]
    if activation:
        layers.append(nn.ReLU6())
    return layers


class InvertedResidual(nn.Module):
    """Expand (1x1), filter (depthwise 3x3), project (1x1, linear); add the input when the
    shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += _conv_bn(in_channels, hidden, 1)
        layers += _conv_bn(hidden, hidden, 3, stride=stride, groups=hidden)
        layers += _conv_bn(hidden, out_channels, 1, activation=False)
        self.layers = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layers(x)
        return x + out if self.residual else out


def build_mobilenetv2(spec: ModelSpec) -> list[nn.Module]:
    """The 20 blocks of MobileNetV2 for ``spec.input_shape`` = (C, H, W), H and W >= 8."""
    require_input(spec, dims=("height", "width"), min_size=_DOWNSAMPLING)
    blocks: list[nn.Module] = [nn.Sequential(*_conv_bn(spec.in_channels, _STEM_CHANNELS, 3))]
    channels = _STEM_CHANNELS
    for expansion, out_channels, repeats, first_stride in _STAGES:
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            blocks.append(
                InvertedResidual(channels, out_channels, stride=stride, expansion=expansion)
            )
            channels = out_channels
    blocks.append(nn.Sequential(*_conv_bn(channels, _LAST_CHANNELS, 1)))
    blocks.append(pooled_classifier(_LAST_CHANNELS, spec.num_classes, dims=2))
    return blocks


register_model(
    "mobilenetv2",
    build_mobilenetv2,
    input_rank=3,
    description="MobileNetV2, CIFAR variant (32x32): stem, 17 inverted residuals, 1x1 conv, head",
)
