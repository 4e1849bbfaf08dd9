import dataclasses
import functools
import json
import math
from typing import Any

import pytest
import torch

from planner import per_block_from_cumulative
from splitnn import (
    BlockProfile,
    ModelSpec,
    SplitError,
    build_model,
    cumulative,
    cut_shapes,
    num_blocks,
    profile_blocks,
    scale_profile,
)
from splitnn.partition import block_index

VGG5 = ModelSpec("vgg5", (3, 32, 32), 10)
SMALL = ModelSpec("small_cnn", (1, 8, 8), 10)
SPECS = [VGG5, SMALL]
SPEC_IDS = [spec.name for spec in SPECS]


@functools.cache
def _profile(spec: ModelSpec, batch_size: int, wire_itemsize: int = 4) -> BlockProfile:
    """Profiles are shared between tests: sizes are what most tests check, and timing costs."""
    return profile_blocks(spec, batch_size, wire_itemsize=wire_itemsize, warmup=1, repeats=3)


def _output_bytes(spec: ModelSpec, batch_size: int, itemsize: int) -> list[int]:
    return [batch_size * math.prod(shape) * itemsize for shape in cut_shapes(spec)]


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_one_positive_entry_per_block(spec: ModelSpec) -> None:
    profile = _profile(spec, 8)
    total = num_blocks(spec)
    assert profile.num_blocks == total
    for name in ("forward_s", "backward_s", "activation_bytes", "activation_memory_bytes"):
        values = getattr(profile, name)
        assert isinstance(values, tuple)
        assert len(values) == total
        assert all(v > 0 for v in values), name
    assert len(profile.param_bytes) == total
    assert all(b >= 0 for b in profile.param_bytes)  # pooling blocks have no weights
    assert profile.batch_size == 8
    assert profile.device == "cpu"
    assert profile.torch_threads == torch.get_num_threads()


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_activation_bytes_are_batch_times_cut_shape_times_itemsize(spec: ModelSpec) -> None:
    full = _profile(spec, 8)
    half = _profile(spec, 8, wire_itemsize=2)
    assert list(full.activation_bytes) == _output_bytes(spec, 8, 4)
    assert [2 * b for b in half.activation_bytes] == list(full.activation_bytes)  # float16


def test_vgg5_activation_bytes_match_the_paper_sizes() -> None:
    elements = (32768, 8192, 16384, 4096, 4096, 128, 10)
    assert _profile(VGG5, 8).activation_bytes == tuple(8 * n * 4 for n in elements)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_param_bytes_add_up_to_the_state_dict(spec: ModelSpec) -> None:
    state = build_model(spec).state_dict()
    per_block = [0] * num_blocks(spec)
    for key, tensor in state.items():
        per_block[block_index(key)] += tensor.numel() * tensor.element_size()
    profile = _profile(spec, 8)
    assert list(profile.param_bytes) == per_block
    assert sum(profile.param_bytes) == sum(t.numel() * t.element_size() for t in state.values())
    # Batch size changes what crosses the cut, never what the weights weigh.
    assert _profile(spec, 2).param_bytes == profile.param_bytes


def test_vgg5_param_bytes_cover_the_parameters_and_batchnorm_buffers() -> None:
    model = build_model(VGG5)
    params = sum(p.numel() for p in model.parameters())
    assert params == 582_346
    # Each BatchNorm adds running mean and variance (float32) and an int64 batch counter.
    buffers = 4 * 2 * (32 + 64 + 64) + 3 * 8
    assert sum(_profile(VGG5, 8).param_bytes) == 4 * params + buffers


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_activation_memory_holds_at_least_each_output(spec: ModelSpec) -> None:
    small, large = _profile(spec, 2), _profile(spec, 8)
    outputs = _output_bytes(spec, 8, 4)
    assert all(m >= o for m, o in zip(large.activation_memory_bytes, outputs, strict=True))
    # Saved activations grow with the batch (only BatchNorm's batch statistics do not).
    assert all(
        m_large > m_small
        for m_small, m_large in zip(
            small.activation_memory_bytes, large.activation_memory_bytes, strict=True
        )
    )


def test_vgg5_activation_memory_counts_what_autograd_saves() -> None:
    memory = _profile(VGG5, 8).activation_memory_bytes
    outputs = _output_bytes(VGG5, 8, 4)
    # conv+BN+ReLU keeps the conv output for BatchNorm and the ReLU output (plus tiny stats).
    assert 2 * outputs[0] <= memory[0] < 2 * outputs[0] + 4096
    # The classifier keeps only its logits; its input is the previous block's output.
    assert memory[-1] == outputs[-1]


def test_profiling_leaves_the_callers_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    profile_blocks(SMALL, 4, warmup=0, repeats=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(4), expected)


def test_profiling_works_inside_no_grad_and_inference_mode() -> None:
    with torch.no_grad():
        assert all(t > 0 for t in profile_blocks(SMALL, 4, warmup=0, repeats=1).backward_s)
    with torch.inference_mode():
        assert all(t > 0 for t in profile_blocks(SMALL, 4, warmup=0, repeats=1).backward_s)


def test_a_large_batch_is_not_faster_than_a_tiny_one() -> None:
    # 64 samples are about 30x the work of one; asserting only "slower" leaves a wide margin
    # for a loaded CI machine while still catching timings that ignore the batch.
    tiny = profile_blocks(VGG5, 1, warmup=1, repeats=3)
    large = profile_blocks(VGG5, 64, warmup=1, repeats=3)
    assert sum(large.forward_s) + sum(large.backward_s) > sum(tiny.forward_s) + sum(tiny.backward_s)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_profile_names_the_gpu_and_has_the_cpu_sizes() -> None:
    profile = profile_blocks(VGG5, 8, device="cuda", warmup=1, repeats=3)
    assert profile.device == f"cuda:{torch.cuda.current_device()}"
    cpu = _profile(VGG5, 8)
    assert profile.activation_bytes == cpu.activation_bytes
    assert profile.param_bytes == cpu.param_bytes
    assert all(t > 0 for t in profile.forward_s + profile.backward_s)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": True},
        {"wire_itemsize": 0},
        {"repeats": 0},
        {"warmup": -1},
        {"warmup": 1.5},
    ],
)
def test_bad_profiling_arguments_are_rejected(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"batch_size": 2, **kwargs}
    with pytest.raises(SplitError, match=next(iter(kwargs))):
        profile_blocks(SMALL, **args)


def _example() -> BlockProfile:
    return BlockProfile(
        forward_s=(0.5, 0.25),
        backward_s=(1.0, 0.0),
        batch_size=4,
        activation_bytes=(64, 8),
        param_bytes=(100, 0),
        activation_memory_bytes=(128, 8),
        device="cpu",
        torch_threads=2,
    )


def test_to_dict_is_plain_json_and_round_trips() -> None:
    profile = _profile(SMALL, 8)
    data = json.loads(json.dumps(profile.to_dict()))
    assert data["forward_s"] == list(profile.forward_s)
    restored = BlockProfile.from_dict(data)
    assert restored == profile
    assert isinstance(restored.forward_s, tuple)
    assert isinstance(restored.param_bytes, tuple)
    # Whole-number times arrive from JSON as ints; they still come back as floats.
    example = _example().to_dict()
    example["backward_s"] = [1, 0]
    assert BlockProfile.from_dict(example) == _example()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"forward_s": [0.5]}, "backward_s has 2 entries"),
        ({"param_bytes": [1, 2, 3]}, "param_bytes has 3 entries"),
        (
            {name: [] for name in _example().to_dict() if name.endswith(("_s", "_bytes"))},
            "at least one block",
        ),
        ({"forward_s": [-0.1, 0.2]}, "forward_s entries must be finite and >= 0"),
        ({"backward_s": [float("nan"), 0.2]}, "backward_s entries must be finite"),
        ({"backward_s": [float("inf"), 0.2]}, "backward_s entries must be finite"),
        ({"forward_s": ["0.1", 0.2]}, "forward_s entries"),
        ({"forward_s": [True, 0.2]}, "forward_s entries"),
        ({"forward_s": "0.1"}, "forward_s must be a list"),
        ({"activation_bytes": [-1, 8]}, "activation_bytes entries must be ints >= 0"),
        ({"param_bytes": [1.5, 0]}, "param_bytes entries must be ints"),
        ({"activation_memory_bytes": [False, 8]}, "activation_memory_bytes entries"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"batch_size": 4.0}, "batch_size must be a positive int"),
        ({"torch_threads": True}, "torch_threads must be a positive int"),
        ({"device": ""}, "device must be a non-empty string"),
        ({"device": None}, "device must be a non-empty string"),
    ],
)
def test_from_dict_rejects_bad_values(change: dict[str, Any], message: str) -> None:
    data = {**_example().to_dict(), **change}
    with pytest.raises(SplitError, match=message):
        BlockProfile.from_dict(data)


@pytest.mark.parametrize(
    "data",
    [
        {k: v for k, v in _example().to_dict().items() if k != "device"},
        {**_example().to_dict(), "wire_itemsize": 4},
        [1, 2],
    ],
    ids=["missing", "extra", "not-a-mapping"],
)
def test_from_dict_needs_exactly_the_fields(data: Any) -> None:
    with pytest.raises(SplitError, match="needs exactly the keys"):
        BlockProfile.from_dict(data)


def test_scale_profile_multiplies_times_only() -> None:
    profile = _example()
    slow = scale_profile(profile, 4.0)
    assert slow.forward_s == (2.0, 1.0)
    assert slow.backward_s == (4.0, 0.0)
    unscaled = dataclasses.replace(slow, forward_s=profile.forward_s, backward_s=profile.backward_s)
    assert unscaled == profile
    assert scale_profile(profile, 1) == profile


@pytest.mark.parametrize("factor", [0.0, -1.0, float("nan"), float("inf"), True])
def test_scale_profile_rejects_bad_factors(factor: float) -> None:
    with pytest.raises(SplitError, match="scale factor"):
        scale_profile(_example(), factor)


def test_cumulative_is_the_planners_d_s() -> None:
    assert cumulative([]) == ()
    assert cumulative((0.5, 0.25, 1.0)) == (0.5, 0.75, 1.75)
    profile = _profile(VGG5, 8)
    per_block = [f + b for f, b in zip(profile.forward_s, profile.backward_s, strict=True)]
    totals = cumulative(per_block)
    assert totals[-1] == pytest.approx(sum(per_block))
    assert per_block_from_cumulative(totals) == pytest.approx(per_block)
