"""Block costs counted on the model, and the emulated boards' times for any model from them."""

from __future__ import annotations

import pytest
from torch import nn

from device_agent.settings import DeviceSettings
from planner import paper
from schemas import ModelInfo
from splitnn.models import ModelSpec, num_blocks
from testbed.block_costs import block_costs, layer_flops, model_profile
from testbed.emulation import Emulation
from testbed.profiles import PROFILE_NAMES

PIXEL_NET = ModelSpec("tests.user_models:pixel_net", (1, 8, 8), 10)
BOARDS = tuple(name for name in PROFILE_NAMES if name != "host")


def test_exact_costs_of_a_known_model() -> None:
    # tests.user_models.pixel_net on 1 x 8 x 8, by hand:
    # 0: conv 1->8 3x3 (512 outputs x 9) + ReLU (512); reads 64 + writes 512 floats, ReLU 2 x 512
    # 1: max-pool 2x2 (128 outputs x 4); reads 512, writes 128
    # 2: conv 8->8 3x3 (128 x 72) + BatchNorm (128) + ReLU (128); each reads and writes 128
    # 3: flatten (a view) + dense 128 -> 10 (10 x 128); reads 128, writes 10
    costs = block_costs(PIXEL_NET)
    assert costs.flops == (4608 + 512, 512, 9216 + 128 + 128, 1280)
    assert costs.moved_bytes == (4 * (64 + 512 + 2 * 512), 4 * 640, 4 * 6 * 128, 4 * 138)
    # Weights and buffers: conv 72 + 8; conv 576 + 8 and BatchNorm 4 x 8 floats and an int64
    # counter; dense 1280 + 10.
    assert costs.param_bytes == (4 * 80, 0, 4 * (584 + 32) + 8, 4 * 1290)


def test_vgg5_costs_are_the_planners() -> None:
    # planner.paper keeps them as numbers (the planner imports no torch): they must agree.
    assert block_costs(ModelSpec("vgg5", (3, 32, 32), 10)) == paper.VGG5_COSTS


def test_costs_are_cached_by_architecture_and_input_shape() -> None:
    assert block_costs(PIXEL_NET) is block_costs(PIXEL_NET)
    bigger = block_costs(ModelSpec("tests.user_models:pixel_net", (1, 16, 16), 10))
    assert bigger.flops[0] == 4 * block_costs(PIXEL_NET).flops[0]


@pytest.mark.parametrize(
    ("layer", "shape", "flops"),
    [
        (nn.Conv1d(3, 4, 5, padding=2), (1, 3, 10), 4 * 10 * 15),
        (nn.Conv2d(4, 4, 3, padding=1, groups=4), (1, 4, 6, 6), 4 * 36 * 9),  # depthwise
        (nn.ConvTranspose2d(2, 3, 2, stride=2), (1, 2, 4, 4), 2 * 16 * 3 * 4),
        (nn.AvgPool1d(4), (1, 2, 8), 2 * 2 * 4),
        (nn.MaxPool2d((2, 3)), (1, 1, 4, 6), 4 * 6),
        (nn.AdaptiveAvgPool2d(1), (1, 5, 4, 4), 80),
        (nn.ReLU6(), (1, 7), 7),
        (nn.Flatten(), (1, 2, 3), 0),
    ],
)
def test_layer_flops(layer: nn.Module, shape: tuple[int, ...], flops: int) -> None:
    import torch

    x = torch.zeros(shape)
    assert layer_flops(layer, [x], layer(x)) == flops


def test_model_profile_sizes() -> None:
    profile = model_profile(PIXEL_NET, 32)
    assert profile.num_blocks == 4
    assert profile.activation_bytes == (32 * 512 * 4, 32 * 128 * 4, 32 * 128 * 4, 32 * 10 * 4)
    assert profile.param_bytes == block_costs(PIXEL_NET).param_bytes
    assert profile.label_bytes == 32 * 8
    # Each block keeps at least its output alive for backward.
    assert all(
        m >= a
        for m, a in zip(profile.activation_memory_bytes, profile.activation_bytes, strict=True)
    )
    vgg5 = model_profile(ModelSpec("vgg5", (3, 32, 32), 10), 100)
    assert vgg5.activation_bytes == paper.vgg5_model().activation_bytes


def emulated_times(
    board: str, spec: ModelSpec, batch: int, time_scale: float = 1.0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    emulation = Emulation(DeviceSettings(device_id="d", profile=board, time_scale=time_scale))
    info = ModelInfo(name=spec.name, input_shape=spec.input_shape, num_classes=spec.num_classes)
    emulation.prepare(info)
    blocks = num_blocks(spec)
    # The host's times play no part: an emulated board reports the same on every host.
    return emulation.block_times((1.0,) * blocks, (1.0,) * blocks, batch, spec.name)


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec("mobilenetv2", (3, 32, 32), 10),
        ModelSpec("resnet18", (3, 32, 32), 10),
        ModelSpec("cnn1d", (3, 128), 6),
        ModelSpec("small_cnn", (1, 8, 8), 10),
        ModelSpec("tiny", (1, 8, 8), 10),
        PIXEL_NET,
    ],
    ids=lambda spec: spec.name,
)
def test_every_board_prices_any_model(spec: ModelSpec) -> None:
    totals = {}
    for board in BOARDS:
        forward, backward = emulated_times(board, spec, 20)
        assert len(forward) == len(backward) == num_blocks(spec)
        assert all(t > 0 for t in forward + backward)
        # Scales with the batch: activations per sample, weights once per batch.
        forward_big, backward_big = emulated_times(board, spec, 80)
        assert all(
            b > s for b, s in zip(forward_big + backward_big, forward + backward, strict=True)
        )
        assert sum(forward_big) <= 4 * sum(forward) + 1e-12
        totals[board] = sum(forward) + sum(backward)
    assert totals["raspberry-pi-3b+"] > totals["jetson-nano-maxn"]
    assert (
        totals["jetson-nano-maxn"]
        < totals["jetson-nano-5w"]
        < totals["jetson-nano-5w-3core"]
        < totals["jetson-nano-5w-1core"]
    )


def test_vgg5_keeps_the_papers_figures_and_time_scale_divides() -> None:
    spec = ModelSpec("vgg5", (3, 32, 32), 10)
    forward, backward = emulated_times("raspberry-pi-3b+", spec, 100, time_scale=2.0)
    pi = paper.raspberry_pi("pi")
    assert forward == pytest.approx(tuple(t / 2 for t in pi.forward_s))
    assert backward == pytest.approx(tuple(t / 2 for t in pi.backward_s))
    # VGG5 on other inputs is not what the paper measured: priced from its costs.
    gray, _ = emulated_times("raspberry-pi-3b+", ModelSpec("vgg5", (1, 32, 32), 10), 100)
    assert gray != pytest.approx(pi.forward_s)


def test_the_host_profile_reports_the_hosts_times() -> None:
    emulation = Emulation(DeviceSettings(device_id="d", profile="host"))
    emulation.prepare(ModelInfo(name="mobilenetv2", input_shape=(3, 32, 32), num_classes=10))
    assert emulation.block_times((0.5, 0.25), (1.0, 2.0), 20, "mobilenetv2") == (
        (0.5, 0.25),
        (1.0, 2.0),
    )
