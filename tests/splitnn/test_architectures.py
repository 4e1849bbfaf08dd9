"""The built-in real architectures (MobileNetV2, ResNet-18, the 1-D CNN): a split model computes
what the whole one does at every cut, and their BatchNorm states average and travel intact."""

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from splitnn import (
    ModelSpec,
    SplitError,
    build_model,
    build_part,
    cut_shapes,
    fedavg,
    load_part_state,
    merge_states,
    num_blocks,
    split_state,
)
from splitnn.model_registry import model_entry
from splitnn.tensors import arrays_to_state, state_to_arrays

MOBILENET = ModelSpec("mobilenetv2", input_shape=(3, 32, 32), num_classes=10)
RESNET = ModelSpec("resnet18", input_shape=(3, 32, 32), num_classes=10)
CNN1D = ModelSpec("cnn1d", input_shape=(3, 64), num_classes=6)
SPECS = (MOBILENET, RESNET, CNN1D)
ALL_CUTS = [(spec, cut) for spec in SPECS for cut in range(1, num_blocks(spec) + 1)]
CUT_IDS = [f"{spec.name}-cut{cut}" for spec, cut in ALL_CUTS]
BATCH = 2


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # Small convolutions are slower on two contended threads than on one (MobileNetV2's
    # depthwise backward by 50x on a shared runner); restored for the rest of the session.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(spec: ModelSpec, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, *spec.input_shape, generator=generator)
    y = torch.randint(0, spec.num_classes, (BATCH,), generator=generator)
    return x, y


def _split_model(spec: ModelSpec, cut: int) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    """A seeded whole model and its device and server parts, loaded from its state."""
    torch.manual_seed(0)
    whole = build_model(spec)
    device_state, server_state = split_state(whole.state_dict(), spec, cut)
    device = build_part(spec, 0, cut)
    server = build_part(spec, cut, num_blocks(spec))
    load_part_state(device, device_state)
    load_part_state(server, server_state)
    return whole, device, server


@pytest.mark.parametrize(
    ("spec", "blocks", "low", "high"),
    [(MOBILENET, 20, 2.2e6, 2.3e6), (RESNET, 10, 11.1e6, 11.2e6), (CNN1D, 5, 1e5, 2e5)],
    ids=lambda v: v.name if isinstance(v, ModelSpec) else None,
)
def test_block_count_and_parameters(spec: ModelSpec, blocks: int, low: float, high: float) -> None:
    model = build_model(spec)
    assert num_blocks(spec) == blocks
    assert low < sum(p.numel() for p in model.parameters()) < high
    assert cut_shapes(spec)[-1] == (spec.num_classes,)


def test_cut_shapes_follow_the_cifar_strides() -> None:
    # Downsampled 8-fold, 32 -> 4: the CIFAR variants' strides, not ImageNet's 32-fold.
    assert cut_shapes(RESNET)[:-1] == [
        (64, 32, 32),
        *[(64, 32, 32)] * 2,
        *[(128, 16, 16)] * 2,
        *[(256, 8, 8)] * 2,
        *[(512, 4, 4)] * 2,
    ]
    assert cut_shapes(MOBILENET)[0] == (32, 32, 32)
    assert cut_shapes(MOBILENET)[-2] == (1280, 4, 4)
    assert cut_shapes(CNN1D)[:-1] == [(32, 32), (64, 16), (128, 8), (128, 8)]


def test_the_architectures_are_registered_with_their_input_rank() -> None:
    assert [model_entry(spec.name).input_rank for spec in SPECS] == [3, 3, 2]


@pytest.mark.parametrize(("spec", "cut"), ALL_CUTS, ids=CUT_IDS)
def test_split_inference_equals_the_whole_model(spec: ModelSpec, cut: int) -> None:
    whole, device, server = _split_model(spec, cut)
    x, _ = _inputs(spec)
    with torch.no_grad():
        expected = whole.eval()(x)
        act = device.eval()(x)
        assert tuple(act.shape[1:]) == cut_shapes(spec)[cut - 1]
        torch.testing.assert_close(server.eval()(act), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("spec", "cut"), ALL_CUTS, ids=CUT_IDS)
def test_split_training_step_equals_the_whole_model(spec: ModelSpec, cut: int) -> None:
    """Train mode (BatchNorm on batch statistics): outputs, the gradient of every parameter and
    the updated running statistics are those of the whole model."""
    whole, device, server = _split_model(spec, cut)
    x, y = _inputs(spec)
    expected = whole(x)
    torch.autograd.backward(nn.functional.cross_entropy(expected, y))

    # Split learning: the device sends act, the server returns the gradient at the cut.
    act = device(x)
    received = act.detach().requires_grad_()
    out = server(received)
    torch.autograd.backward(nn.functional.cross_entropy(out, y))
    assert received.grad is not None
    torch.autograd.backward(act, received.grad)

    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    parts = dict(device.named_parameters()) | dict(server.named_parameters())
    whole_parameters = dict(whole.named_parameters())
    assert parts.keys() == whole_parameters.keys()
    for name, parameter in whole_parameters.items():
        assert parameter.grad is not None, name
        torch.testing.assert_close(parts[name].grad, parameter.grad, rtol=1e-4, atol=1e-6)
    merged = merge_states(spec, device.state_dict(), server.state_dict())
    torch.testing.assert_close(merged, whole.state_dict(), rtol=1e-5, atol=1e-6)


def _trained_state(spec: ModelSpec, seed: int, steps: int) -> dict[str, Tensor]:
    """A state whose BatchNorm statistics and counters moved: ``steps`` train-mode passes."""
    torch.manual_seed(seed)
    model = build_model(spec)
    with torch.no_grad():
        for step in range(steps):
            model(_inputs(spec, seed=100 * seed + step)[0])
    return model.state_dict()


def test_fedavg_averages_batchnorm_statistics_and_counters() -> None:
    a, b = _trained_state(RESNET, seed=1, steps=1), _trained_state(RESNET, seed=2, steps=2)
    averaged = fedavg([a, b], [1, 2])  # counters 1 and 2, weighted: (1 + 4) / 3 = 1.67 -> 2

    buffers = [k for k in a if k.endswith(("running_mean", "running_var"))]
    counters = [k for k in a if k.endswith("num_batches_tracked")]
    assert len(buffers) == 2 * len(counters) == 2 * 20  # stem, 16 in blocks, 3 shortcuts
    for key in buffers:
        assert not torch.equal(a[key], b[key]), key
        expected = (a[key].double() + 2 * b[key].double()) / 3
        torch.testing.assert_close(averaged[key], expected.float())
    for key in counters:
        assert (a[key].item(), b[key].item()) == (1, 2)
        assert averaged[key].dtype == torch.int64
        assert averaged[key].shape == ()
        assert averaged[key].item() == 2

    model = build_model(RESNET)
    model.load_state_dict(averaged)  # the average is a state the model takes as it is


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_state_survives_the_wire_arrays(spec: ModelSpec) -> None:
    state = _trained_state(spec, seed=3, steps=1)
    restored = arrays_to_state(state_to_arrays(state))
    assert list(restored) == list(state)
    for key, value in state.items():
        assert restored[key].dtype == value.dtype, key
        assert torch.equal(restored[key], value), key

    torch.manual_seed(4)  # other weights, overwritten by the restored state
    model = build_model(spec)
    model.load_state_dict(restored)
    original = build_model(spec)
    original.load_state_dict(state)
    x, _ = _inputs(spec)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), original.eval()(x))


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 28, 28), (3, 32, 24), (3, 64, 64)])
@pytest.mark.parametrize("name", ["mobilenetv2", "resnet18"])
def test_image_models_take_any_image_of_at_least_8x8(name: str, shape: tuple[int, ...]) -> None:
    spec = ModelSpec(name, input_shape=shape, num_classes=5)
    with torch.no_grad():
        assert build_model(spec).eval()(torch.zeros(1, *shape)).shape == (1, 5)


@pytest.mark.parametrize("steps", [8, 37, 128])
def test_cnn1d_takes_any_series_of_at_least_8_steps(steps: int) -> None:
    spec = ModelSpec("cnn1d", input_shape=(6, steps), num_classes=4)
    with torch.no_grad():
        assert build_model(spec).eval()(torch.zeros(3, 6, steps)).shape == (3, 4)


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("mobilenetv2", (3, 32), "rank|dimensions"),
        ("resnet18", (3, 32, 32, 1), "rank|dimensions"),
        ("cnn1d", (3, 8, 8), "rank|dimensions"),
        ("mobilenetv2", (3, 4, 32), "height and width must each be at least 8; got height 4"),
        ("resnet18", (3, 32, 7), "at least 8; got width 7"),
        ("cnn1d", (3, 7), "steps must be at least 8; got steps 7"),
    ],
)
def test_inputs_the_model_cannot_take_are_refused(
    name: str, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(SplitError, match=message):
        build_model(ModelSpec(name, input_shape=shape, num_classes=10))
