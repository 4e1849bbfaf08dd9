import numpy as np
import pytest
import torch
from torch import nn

from splitnn import (
    ModelSpec,
    SplitError,
    block_index,
    build_model,
    build_part,
    cut_shapes,
    device_blocks,
    load_part_state,
    merge_states,
    num_blocks,
    server_blocks,
    split_state,
    validate_cut,
)

VGG5 = ModelSpec("vgg5", (3, 32, 32), 10)
SMALL = ModelSpec("small_cnn", (1, 8, 8), 10)
ALL_CUTS = [(spec, cut) for spec in (VGG5, SMALL) for cut in range(1, num_blocks(spec) + 1)]
CUT_IDS = [f"{spec.name}-cut{cut}" for spec, cut in ALL_CUTS]


def _split_model(spec: ModelSpec, cut: int) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    """A seeded full model and device/server parts loaded with the same weights."""
    torch.manual_seed(0)
    full = build_model(spec)
    device_state, server_state = split_state(full.state_dict(), spec, cut)
    total = num_blocks(spec)
    device = build_part(spec, 0, cut)
    server = build_part(spec, cut, total)
    load_part_state(device, device_state)
    load_part_state(server, server_state)
    return full, device, server


@pytest.mark.parametrize(("spec", "cut"), ALL_CUTS, ids=CUT_IDS)
def test_split_training_step_equals_the_unsplit_model(spec: ModelSpec, cut: int) -> None:
    full, device, server = _split_model(spec, cut)
    x = torch.randn(8, *spec.input_shape)
    y = torch.randint(0, spec.num_classes, (8,))

    expected_out = full(x)
    torch.autograd.backward(nn.functional.cross_entropy(expected_out, y))

    # Split learning: the device sends act, the server returns the gradient at the cut.
    act = device(x)
    assert tuple(act.shape[1:]) == cut_shapes(spec)[cut - 1]
    received = act.detach().requires_grad_()
    out = server(received)
    torch.autograd.backward(nn.functional.cross_entropy(out, y))
    assert received.grad is not None
    torch.autograd.backward(act, received.grad)

    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    split_state_after = merge_states(spec, device.state_dict(), server.state_dict())
    split_params = {**dict(device.named_parameters()), **dict(server.named_parameters())}
    for name, param in full.named_parameters():
        assert param.grad is not None
        assert split_params[name].grad is not None
        torch.testing.assert_close(split_params[name].grad, param.grad, rtol=0, atol=0)
    for key, value in full.state_dict().items():  # BatchNorm running stats moved alike
        assert torch.equal(split_state_after[key], value), key


@pytest.mark.parametrize(("spec", "cut"), ALL_CUTS, ids=CUT_IDS)
def test_split_then_merge_is_the_identity(spec: ModelSpec, cut: int) -> None:
    state = build_model(spec).state_dict()
    device_state, server_state = split_state(state, spec, cut)
    assert set(device_state).isdisjoint(server_state)
    merged = merge_states(spec, device_state, server_state)
    assert list(merged) == list(state)
    assert all(torch.equal(merged[k], state[k]) for k in state)
    assert merge_states(server_state, device_state).keys() == state.keys()


def test_parts_use_global_block_names() -> None:
    part = build_part(VGG5, 5, 7)
    assert [name for name, _ in part.named_children()] == ["5", "6"]
    assert set(part.state_dict()) == {"5.1.weight", "5.1.bias", "6.weight", "6.bias"}
    assert list(device_blocks(3)) == [0, 1, 2]
    assert list(server_blocks(3, 7)) == [3, 4, 5, 6]


def test_full_cut_leaves_the_server_an_identity() -> None:
    _, device, server = _split_model(SMALL, num_blocks(SMALL))
    assert len(server) == 0
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(server(device(x)), device(x))


def test_parts_built_under_a_seed_match_the_full_model() -> None:
    torch.manual_seed(5)
    full = build_model(VGG5).state_dict()
    torch.manual_seed(5)
    part = build_part(VGG5, 2, 6).state_dict()
    assert all(torch.equal(value, full[key]) for key, value in part.items())


def test_numpy_ints_are_valid_cuts() -> None:
    validate_cut(VGG5, np.int64(3))  # type: ignore[arg-type]


@pytest.mark.parametrize("cut", [0, -1, 8, True, 2.0, "3", np.int64(8)])
def test_invalid_cuts_are_rejected(cut: object) -> None:
    with pytest.raises(SplitError, match=r"1\.\.7"):
        validate_cut(VGG5, cut)  # type: ignore[arg-type]
    with pytest.raises(SplitError):
        split_state(build_model(VGG5).state_dict(), VGG5, cut)  # type: ignore[arg-type]


@pytest.mark.parametrize(("start", "stop"), [(-1, 2), (3, 2), (0, 8)])
def test_invalid_part_ranges_are_rejected(start: int, stop: int) -> None:
    with pytest.raises(SplitError):
        build_part(VGG5, start, stop)


def test_split_state_needs_a_full_state() -> None:
    state = build_model(SMALL).state_dict()
    del state["4.bias"]
    with pytest.raises(SplitError, match=r"4\.bias"):
        split_state(state, SMALL, 2)


def test_merge_rejects_overlap_and_incomplete_or_foreign_keys() -> None:
    device_state, server_state = split_state(build_model(SMALL).state_dict(), SMALL, 2)
    with pytest.raises(SplitError, match="overlap"):
        merge_states(device_state, server_state, {"3.1.bias": torch.zeros(64)})
    with pytest.raises(SplitError, match=r"missing keys \['3\.1\.bias'"):
        merge_states(
            SMALL, device_state, {k: v for k, v in server_state.items() if k != "3.1.bias"}
        )
    with pytest.raises(SplitError, match=r"unexpected.*9\.weight"):
        merge_states(SMALL, device_state, server_state, {"9.weight": torch.zeros(1)})
    with pytest.raises(SplitError, match="first argument"):
        merge_states(device_state, SMALL, server_state)  # type: ignore[call-overload]


def test_load_part_state_names_what_does_not_fit() -> None:
    part = build_part(SMALL, 0, 2)
    state = part.state_dict()
    with pytest.raises(SplitError, match=r"missing keys \['1\.0\.bias'\]"):
        load_part_state(part, {k: v for k, v in state.items() if k != "1.0.bias"})
    with pytest.raises(SplitError, match=r"unexpected \['2\.weight'\]"):
        load_part_state(part, {**state, "2.weight": torch.zeros(1)})
    with pytest.raises(SplitError, match=r"1\.0\.bias: expected \(32,\), got \(31,\)"):
        load_part_state(part, {**state, "1.0.bias": torch.zeros(31)})


def test_block_index() -> None:
    assert block_index("5.1.weight") == 5
    assert block_index("12") == 12
    with pytest.raises(SplitError, match="block index"):
        block_index("head.weight")
