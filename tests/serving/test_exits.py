"""Exit heads for any model: their shapes per activation rank, where they go by default, and one
forward pass that yields every exit's logits and the model's own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitnn import ModelSpec, SplitError, build_model, cut_shapes, num_blocks
from splitnn.exits import (
    HEAD_FEATURES,
    build_exits,
    check_positions,
    confidence,
    default_exit_positions,
    exit_head,
    exit_positions,
    forward_with_exits,
    split_head,
)


def scores_before_the_end(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """A user's model whose third block already gives class scores (then a softmax-free
    rescaling block): no exit belongs after it."""
    features = 1
    for size in input_shape:
        features *= size
    return nn.Sequential(
        nn.Flatten(),
        nn.Sequential(nn.Linear(features, 16), nn.ReLU()),
        nn.Linear(16, num_classes),
        nn.Linear(num_classes, num_classes),
    )


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("shape", "pooled", "features"),
    [
        ((16, 8, 8), nn.AdaptiveAvgPool2d, 16 * 4 * 4),  # a 4 x 4 grid: the finest for images
        ((128, 16, 16), nn.AdaptiveAvgPool2d, 128 * 2 * 2),  # the budget coarsens the grid
        ((512, 4, 4), nn.AdaptiveAvgPool2d, 512),  # down to global pooling
        ((8, 3, 5), nn.AdaptiveAvgPool2d, 8 * 3 * 3),  # never finer than the activation
        ((32, 32), nn.AdaptiveAvgPool1d, 32 * 8),  # series: up to 8 steps
        ((4, 2, 6, 6), nn.AdaptiveAvgPool3d, 4 * 2 * 2 * 2),  # volumes
        ((64,), None, 64),  # flat: a linear layer only
    ],
)
def test_a_head_pools_to_a_small_grid_then_classifies(shape, pooled, features) -> None:
    head = exit_head(shape, 10)
    front, linear = split_head(head)
    assert linear.in_features == features <= max(HEAD_FEATURES, shape[0])
    assert linear.out_features == 10
    if pooled is None:
        assert len(front) == 0
    else:
        assert isinstance(front[0], pooled)
    assert not list(front.parameters())  # the front has no weights: features can be cached
    assert head(torch.randn(3, *shape)).shape == (3, 10)


def test_activations_of_rank_five_have_no_head() -> None:
    with pytest.raises(SplitError, match="rank 5"):
        exit_head((2, 2, 2, 2, 2), 10)


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("vgg5", (3, 32, 32), (1, 2, 3, 4, 5, 6)),  # L = 7: every boundary
        ("small_cnn", (1, 8, 8), (1, 2, 3, 4)),
        ("cnn1d", (3, 64), (1, 2, 3, 4)),
        ("tests.user_models:pixel_net", (1, 8, 8), (1, 2, 3)),
        ("resnet18", (3, 32, 32), (1, 3, 5, 7)),  # L = 10: 4 over the first two thirds
        ("tests.serving.test_exits:scores_before_the_end", (1, 4, 4), (1, 2)),
    ],
)
def test_default_positions(name, shape, expected) -> None:
    assert default_exit_positions(ModelSpec(name, shape, 10)) == expected


def test_a_deep_model_gets_at_most_six_exits_in_its_first_two_thirds() -> None:
    spec = ModelSpec("mobilenetv2", (3, 32, 32), 10)  # L = 20
    positions = default_exit_positions(spec)
    assert 4 <= len(positions) <= 6
    assert positions == tuple(sorted(set(positions)))
    assert max(positions) <= round(num_blocks(spec) * 2 / 3)


@pytest.mark.parametrize("bad", [[0], [7], [2, 2], [True], [1.5]])
def test_bad_positions_are_refused(bad) -> None:
    with pytest.raises(SplitError, match="exit positions"):
        check_positions(ModelSpec("vgg5", (3, 32, 32), 10), bad)


def test_one_pass_gives_every_exit_and_the_model_output() -> None:
    spec = ModelSpec("small_cnn", (1, 8, 8), 10)
    torch.manual_seed(0)
    model, exits = build_model(spec).eval(), build_exits(spec, [3, 1]).eval()
    assert list(exits) == ["1", "3"]
    assert exit_positions(exits) == (1, 3)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        logits, final = forward_with_exits(model, exits, x)
        assert torch.equal(final, model(x))
        assert torch.equal(logits[1], exits["1"](model[0](x)))
        assert torch.equal(logits[3], exits["3"](model[:3](x)))
    assert set(logits) == {1, 3}
    top, label = confidence(logits[1])
    assert top.shape == label.shape == (5,)
    assert torch.all((top > 0) & (top <= 1))
    assert torch.equal(label, logits[1].argmax(dim=1))


def test_heads_fit_every_boundary_of_every_built_in_model() -> None:
    for name, shape in (("vgg5", (3, 32, 32)), ("cnn1d", (3, 64)), ("tiny", (1, 8, 8))):
        spec = ModelSpec(name, shape, 10)
        exits = build_exits(spec, range(1, num_blocks(spec)))
        for position, head in exits.items():
            out = head(torch.zeros(2, *cut_shapes(spec)[int(position) - 1]))
            assert out.shape == (2, 10)
