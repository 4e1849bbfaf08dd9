"""Models a user might write, for the registry and end-to-end tests: none of them is built in.

They are importable as ``tests.user_models:...`` wherever the repository root is on the path
(the tests' subprocesses set PYTHONPATH to it).
"""

from __future__ import annotations

from torch import nn


def pixel_net(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """A small CNN for tiny square images: conv, pool, conv, dense (four blocks)."""
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU()),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(8 * (height // 2) * (width // 2), num_classes)),
    )


def wider_pixel_net(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """``pixel_net`` with a wider first block: another architecture under a similar name."""
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU()),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(8 * (height // 2) * (width // 2), num_classes)),
    )


def no_arguments() -> nn.Sequential:
    """Takes nothing: fixed to 1 x 8 x 8 inputs and 10 classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def not_a_chain(num_classes: int) -> nn.Module:
    return nn.Linear(4, num_classes)


def broken(num_classes: int) -> nn.Sequential:
    raise RuntimeError("out of coffee")
