import json
import math

import pytest
import torch
from torch import nn

from splitnn import (
    ModelSpec,
    SplitError,
    build_blocks,
    build_model,
    cut_shapes,
    load_dataset,
    num_blocks,
    state_keys,
)

CLASSIC_MODELS = ("vgg5", "small_cnn", "tiny")
VGG5_CIFAR = ModelSpec("vgg5", (3, 32, 32), 10)
SMALL_DIGITS = ModelSpec("small_cnn", (1, 8, 8), 10)


def test_vgg5_matches_the_paper_model() -> None:
    assert num_blocks(VGG5_CIFAR) == 7
    assert [math.prod(s) for s in cut_shapes(VGG5_CIFAR)] == [
        32768, 8192, 16384, 4096, 4096, 128, 10,
    ]  # fmt: skip
    params = sum(p.numel() for p in build_model(VGG5_CIFAR).parameters())
    assert params == 582_346  # ~0.58M
    assert sum(isinstance(m, nn.BatchNorm2d) for m in build_model(VGG5_CIFAR).modules()) == 3


def test_small_cnn_shapes() -> None:
    assert num_blocks(SMALL_DIGITS) == 5
    assert cut_shapes(SMALL_DIGITS) == [(16, 8, 8), (32, 8, 8), (32, 4, 4), (64,), (10,)]


@pytest.mark.parametrize("name", CLASSIC_MODELS)
@pytest.mark.parametrize(("channels", "size", "classes"), [(1, 28, 10), (3, 16, 7)])
def test_models_are_generic_in_input_size(
    name: str, channels: int, size: int, classes: int
) -> None:
    spec = ModelSpec(name, (channels, size, size), classes)
    out = build_model(spec).eval()(torch.zeros(2, channels, size, size))
    assert out.shape == (2, classes)
    assert cut_shapes(spec)[-1] == (classes,)


def test_tiny_model_shapes() -> None:
    spec = ModelSpec("tiny", (1, 8, 8), 10)
    assert num_blocks(spec) == 3
    assert cut_shapes(spec) == [(32,), (32,), (10,)]
    params = sum(p.numel() for p in build_model(spec).parameters())
    assert params == (64 * 32 + 32) + (32 * 32 + 32) + (32 * 10 + 10)
    assert state_keys(spec)[0] == "0.1.weight"  # block 0 is Flatten, Linear, ReLU


def test_state_keys_start_with_the_block_index() -> None:
    model = build_model(VGG5_CIFAR)
    assert state_keys(VGG5_CIFAR) == tuple(model.state_dict())
    assert "5.1.weight" in state_keys(VGG5_CIFAR)
    assert [name for name, _ in model.named_children()] == [str(i) for i in range(7)]


def test_probing_shapes_leaves_the_callers_rng_alone() -> None:
    spec = ModelSpec("vgg5", (2, 12, 12), 3)  # not probed anywhere else, so not cached yet
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    cut_shapes(spec)
    assert torch.equal(torch.rand(3), expected)


def test_same_seed_same_weights() -> None:
    torch.manual_seed(3)
    first = build_model(SMALL_DIGITS).state_dict()
    torch.manual_seed(3)
    second = build_model(SMALL_DIGITS).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_spec_round_trips_through_json() -> None:
    wire = json.dumps(VGG5_CIFAR.to_dict())
    assert ModelSpec.from_dict(json.loads(wire)) == VGG5_CIFAR


def test_spec_reads_the_older_square_image_form() -> None:
    old = {"name": "vgg5", "in_channels": 3, "image_size": 32, "num_classes": 10}
    assert ModelSpec.from_dict(old) == VGG5_CIFAR


@pytest.mark.parametrize(
    "data",
    [
        {"name": "vgg5", "in_channels": 3, "image_size": 32},
        {"name": "vgg5", "in_channels": 3, "image_size": 32, "num_classes": 10, "extra": 1},
        {"name": "vgg5", "in_channels": 3, "image_size": 32, "num_classes": "10"},
        {"name": "vgg5", "in_channels": True, "image_size": 32, "num_classes": 10},
        {"name": "vgg5", "in_channels": 3, "image_size": 0, "num_classes": 10},
        {"name": "resnet", "in_channels": 3, "image_size": 32, "num_classes": 10},
        ["name", "in_channels", "image_size", "num_classes"],
        {"name": "vgg5", "input_shape": [3, 32, 32]},
        {"name": "vgg5", "input_shape": [3, -32, 32], "num_classes": 10},
        {"name": "vgg5", "input_shape": "3x32x32", "num_classes": 10},
        {"name": "vgg5", "input_shape": [], "num_classes": 10},
        {"name": "vgg5", "input_shape": [3, 32, 32], "num_classes": 1},
    ],
)
def test_bad_specs_are_rejected(data: dict[str, object]) -> None:
    with pytest.raises(SplitError):
        ModelSpec.from_dict(data)


@pytest.mark.parametrize(
    ("name", "size"), [("vgg5", 30), ("vgg5", 2), ("small_cnn", 7), ("small_cnn", 1)]
)
def test_impossible_image_sizes_are_rejected(name: str, size: int) -> None:
    spec = ModelSpec(name, (3, size, size), 10)
    with pytest.raises(SplitError, match="multiple of"):
        build_blocks(spec)
    with pytest.raises(SplitError):
        cut_shapes(spec)


def test_small_cnn_learns_digits() -> None:
    torch.manual_seed(0)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    model = build_model(SMALL_DIGITS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    for _ in range(5):
        for batch in torch.split(torch.randperm(len(y)), 32):
            optimizer.zero_grad()
            torch.autograd.backward(nn.functional.cross_entropy(model(x[batch]), y[batch]))
            optimizer.step()
    with torch.no_grad():
        predicted = model.eval()(torch.from_numpy(test.x)).argmax(dim=1).numpy()
    assert (predicted == test.y).mean() > 0.9
