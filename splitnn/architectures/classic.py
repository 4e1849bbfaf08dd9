"""The first models: VGG5 (the ARES paper's), a small CNN and a multilayer perceptron."""

from __future__ import annotations

from torch import nn

from splitnn.errors import SplitError
from splitnn.model_registry import register_model
from splitnn.models import ModelSpec


def conv_block(in_channels: int, out_channels: int, *, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _dense(in_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, out_features), nn.ReLU())


def pooled_side(spec: ModelSpec, factor: int) -> int:
    """The side length after ``factor``-fold pooling of a square image; pooling must not drop
    pixels."""
    _, height, width = spec.input_shape
    if height != width or height % factor:
        raise SplitError(
            f"{spec.name} takes square images whose side is a multiple of {factor}, got "
            f"{height}x{width}"
        )
    return height // factor


def vgg5(spec: ModelSpec) -> list[nn.Module]:
    side = pooled_side(spec, 4)
    return [
        conv_block(spec.in_channels, 32, batch_norm=True),
        nn.MaxPool2d(2),
        conv_block(32, 64, batch_norm=True),
        nn.MaxPool2d(2),
        conv_block(64, 64, batch_norm=True),
        _dense(64 * side * side, 128),
        nn.Linear(128, spec.num_classes),
    ]


def small_cnn(spec: ModelSpec) -> list[nn.Module]:
    side = pooled_side(spec, 2)
    return [
        conv_block(spec.in_channels, 16, batch_norm=False),
        conv_block(16, 32, batch_norm=False),
        nn.MaxPool2d(2),
        _dense(32 * side * side, 64),
        nn.Linear(64, spec.num_classes),
    ]


def tiny(spec: ModelSpec) -> list[nn.Module]:
    """A multilayer perceptron for load tests: many devices, little compute, small frames."""
    features = 1
    for size in spec.input_shape:
        features *= size
    return [
        _dense(features, 32),
        nn.Sequential(nn.Linear(32, 32), nn.ReLU()),
        nn.Linear(32, spec.num_classes),
    ]


register_model("vgg5", vgg5, description="the ARES paper's VGG5: 3 conv blocks, 2 pools, 2 dense")
register_model("small_cnn", small_cnn, description="2 conv blocks, a pool and 2 dense layers")
register_model("tiny", tiny, input_rank=None, description="a 3-layer perceptron for load tests")
