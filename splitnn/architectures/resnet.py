"""ResNet-18 (He et al., CVPR 2016) in its 32x32 (CIFAR) variant.

The CIFAR adaptation (as in kuangliu/pytorch-cifar) replaces the ImageNet stem (7x7 stride-2
conv and a max pool) with a 3x3 stride-1 conv, so a 32x32 image keeps its size through the first
stage and is downsampled 8-fold by the three later stages (64, 128, 256, 512 channels, two
BasicBlocks each). About 11.17M parameters for 10 classes.

Blocks (10; each a cut candidate): the stem (3x3 conv-BN-ReLU), each of the 8 BasicBlocks, and
the head (global average pool, flatten, linear). A BasicBlock's skip connection stays inside it,
so every boundary between blocks is a natural cut.
"""

from __future__ import annotations

from torch import Tensor, nn

from splitnn.architectures._shared import pooled_classifier, require_input
from splitnn.model_registry import register_model
from splitnn.models import ModelSpec

_STAGES = (64, 128, 256, 512)  # channels; every stage after the first starts with stride 2
_BLOCKS_PER_STAGE = 2
_DOWNSAMPLING = 2 ** (len(_STAGES) - 1)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (1x1 conv-BN where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: Tensor = self.relu(out + self.shortcut(x))
        return result


def build_resnet18(spec: ModelSpec) -> list[nn.Module]:
    """The 10 blocks of ResNet-18 for ``spec.input_shape`` = (C, H, W), H and W >= 8."""
    require_input(spec, dims=("height", "width"), min_size=_DOWNSAMPLING)
    blocks: list[nn.Module] = [
        nn.Sequential(
            nn.Conv2d(spec.in_channels, _STAGES[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(_STAGES[0]),
            nn.ReLU(),
        )
    ]
    channels = _STAGES[0]
    for stage, out_channels in enumerate(_STAGES):
        for i in range(_BLOCKS_PER_STAGE):
            stride = 2 if stage > 0 and i == 0 else 1
            blocks.append(BasicBlock(channels, out_channels, stride=stride))
            channels = out_channels
    blocks.append(pooled_classifier(channels, spec.num_classes, dims=2))
    return blocks


register_model(
    "resnet18",
    build_resnet18,
    input_rank=3,
    description="ResNet-18, CIFAR variant (32x32): stem, 8 BasicBlocks, head",
)
