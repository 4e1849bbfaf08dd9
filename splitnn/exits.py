"""Early-exit heads: small classifiers on the activations at block boundaries, for any model.

An exit at position ``p`` (1 <= p < L) reads block ``p``'s output, the activation at cut ``p``,
so a device that holds blocks ``[0, cut)`` can run every exit at ``p <= cut`` itself and answer
without the edge when one is confident enough. Exits are a ``nn.ModuleDict`` keyed ``str(p)``,
apart from the model: the model's blocks, state dict and fingerprint stay what training made.

A head pools the activation to a small fixed grid, flattens it and applies one linear layer.
Global average pooling (a 1 x 1 grid, the textbook head) throws away where things are, which
early layers need: on digits (8 x 8 images) a small CNN's exits reached 0.12, 0.41 and 0.56
accuracy with it and 0.93, 0.97 and 0.96 with a 4 x 4 grid. The grid is as fine as a budget of
``HEAD_FEATURES`` pooled values allows (at most 4 x 4 for images, 8 steps for series), so a head
stays a few thousand weights on a board whatever the channel count. Flat activations get a
plain linear layer: a hidden layer would add device compute for what the backbone's own dense
layers already do. The pooling has no weights, so a head's pooled features can be computed once
and only its linear layer trained (:mod:`serving.calibration`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from splitnn.errors import SplitError
from splitnn.models import ModelSpec, cut_shapes, num_blocks

HEAD_FEATURES = 1024  # pooled values a head reads, at most (unless the activation is flat)
_MAX_GRID = {1: 8, 2: 4, 3: 2}  # the finest grid per spatial rank: series, images, volumes
_POOLS: dict[int, type[nn.Module]] = {
    1: nn.AdaptiveAvgPool1d,
    2: nn.AdaptiveAvgPool2d,
    3: nn.AdaptiveAvgPool3d,
}
# Models of up to this many blocks get an exit at every boundary; deeper ones a spread of them.
EVERY_BOUNDARY_UP_TO = 8
_SPREAD_EXITS = (4, 6)  # how many a deeper model gets, at least and at most
_SPREAD_OVER = 2 / 3  # the part of a deeper model they are spread over, from the input


def exit_head(shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """A fresh head for one sample's activation of ``shape``: (F,), (C, T), (C, H, W) or
    (C, D, H, W). Its leading modules have no weights (pooling, flattening); the last is the
    linear layer."""
    if not shape or any(n < 1 for n in shape):
        raise SplitError(f"an exit head needs a non-empty activation shape, got {shape}")
    if len(shape) == 1:
        return nn.Sequential(nn.Linear(shape[0], num_classes))
    channels, spatial = shape[0], shape[1:]
    pool = _POOLS.get(len(spatial))
    if pool is None:
        raise SplitError(f"no exit head for activations of rank {len(shape)}, shape {shape}")
    grid = _grid(channels, spatial)
    features = channels * grid ** len(spatial)
    return nn.Sequential(pool(grid), nn.Flatten(), nn.Linear(features, num_classes))


def _grid(channels: int, spatial: tuple[int, ...]) -> int:
    """The finest grid side within the feature budget, the rank's cap and the activation."""
    grid = min(_MAX_GRID[len(spatial)], *spatial)
    while grid > 1 and channels * grid ** len(spatial) > HEAD_FEATURES:
        grid -= 1
    return grid


def default_exit_positions(spec: ModelSpec) -> tuple[int, ...]:
    """Where exits go unless a user says (the ``exits`` setting).

    Every boundary of a model of up to ``EVERY_BOUNDARY_UP_TO`` blocks; for a deeper one, 4 to
    6 (a third of its blocks) evenly from its first boundary to two thirds of its depth: past
    that a device holds most of the model and an exit saves it little. Positions
    whose output is already class scores are skipped (a head there would repeat them).
    """
    shapes = cut_shapes(spec)
    total = len(shapes)
    candidates = [p for p in range(1, total) if shapes[p - 1] != (spec.num_classes,)]
    if total <= EVERY_BOUNDARY_UP_TO:
        return tuple(candidates)
    reach = round(total * _SPREAD_OVER)
    pool = [p for p in candidates if p <= reach] or candidates
    low, high = _SPREAD_EXITS
    count = min(len(pool), max(low, min(high, total // 3)))
    if count < 2:
        return tuple(pool[-1:])
    step = (len(pool) - 1) / (count - 1)
    return tuple(sorted({pool[round(i * step)] for i in range(count)}))


def check_positions(spec: ModelSpec, positions: Iterable[int]) -> tuple[int, ...]:
    """``positions`` sorted, each an int in 1..L-1 once; else a SplitError."""
    total = num_blocks(spec)
    given = list(positions)
    bad = [p for p in given if type(p) is not int or not 1 <= p < total]
    if bad:
        raise SplitError(
            f"exit positions for {spec.name} must be ints in 1..{total - 1} (an exit at p reads "
            f"block p's output), got {bad}"
        )
    if len(set(given)) != len(given):
        raise SplitError(f"exit positions repeat: {given}")
    return tuple(sorted(given))


def build_exits(spec: ModelSpec, positions: Iterable[int]) -> nn.ModuleDict:
    """Fresh heads at ``positions``, keyed ``str(p)`` (seed torch first for reproducible
    weights)."""
    shapes = cut_shapes(spec)
    return nn.ModuleDict(
        {
            str(p): exit_head(shapes[p - 1], spec.num_classes)
            for p in check_positions(spec, positions)
        }
    )


def split_head(head: nn.Module) -> tuple[nn.Sequential, nn.Linear]:
    """A head's weight-free front (pooling, flattening; possibly empty) and its linear layer."""
    if not isinstance(head, nn.Sequential) or not isinstance(head[-1], nn.Linear):
        raise SplitError(f"not an exit head: {type(head).__name__}")
    front = head[:-1]
    assert isinstance(front, nn.Sequential)
    return front, head[-1]


def exit_positions(exits: nn.ModuleDict) -> tuple[int, ...]:
    """The positions of ``exits``, in order."""
    return tuple(sorted(int(key) for key in exits))


def forward_with_exits(
    model: nn.Sequential, exits: nn.ModuleDict, x: Tensor
) -> tuple[dict[int, Tensor], Tensor]:
    """Every exit's logits (by position) and the model's own, from one pass over ``x``."""
    logits: dict[int, Tensor] = {}
    for index, block in enumerate(model):
        x = block(x)
        key = str(index + 1)
        if key in exits:
            logits[index + 1] = exits[key](x)
    return logits, x


def confidence(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(max softmax probability, predicted class)`` per sample: what a threshold is met by."""
    probabilities = torch.softmax(logits.float(), dim=-1)
    top, label = probabilities.max(dim=-1)
    return top, label
