import math

import pytest
import torch
from torch import Tensor

from splitnn import ModelSpec, SplitError, build_model, fedavg, merge_states, split_state

VGG5 = ModelSpec("vgg5", (3, 32, 32), 10)


def _states(count: int) -> list[dict[str, Tensor]]:
    """Distinct full vgg5 states, with distinct BatchNorm counters too."""
    states = []
    for i in range(count):
        torch.manual_seed(i)
        state = build_model(VGG5).state_dict()
        for key in state:
            if key.endswith("num_batches_tracked"):
                state[key] = torch.tensor(10 * (i + 1))
        states.append(state)
    return states


def test_equal_weights_give_the_plain_mean() -> None:
    states = _states(3)
    averaged = fedavg(states, [5, 5, 5])
    for key, value in averaged.items():
        stacked = torch.stack([s[key].double() for s in states])
        assert value.dtype == states[0][key].dtype
        torch.testing.assert_close(value, stacked.mean(dim=0).to(value.dtype))
    assert averaged["0.1.num_batches_tracked"].item() == 20


def test_weights_are_proportional() -> None:
    a, b = _states(2)
    averaged = fedavg([a, b], [100, 300])
    assert averaged.keys() == a.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(averaged[key], 0.25 * a[key] + 0.75 * b[key])
            torch.testing.assert_close(averaged[key], fedavg([a, b, b, b], [1, 1, 1, 1])[key])
    # Integer buffers: 0.25 * 10 + 0.75 * 20 = 17.5 rounds to even; 1/3, 2/3 gives 16.67 -> 17.
    assert averaged["0.1.num_batches_tracked"].item() == 18
    assert fedavg([a, b], [1, 2])["0.1.num_batches_tracked"].item() == 17
    assert averaged["0.1.num_batches_tracked"].dtype == torch.int64


def test_zero_weight_states_do_not_count() -> None:
    a, b = _states(2)
    averaged = fedavg([a, b], [0, 3])
    assert all(torch.equal(averaged[k], b[k]) for k in b)


@pytest.mark.parametrize("weight", [1, 0.3, 7e9])
def test_single_state_is_copied_exactly(weight: float) -> None:
    (state,) = _states(1)
    averaged = fedavg([state], [weight])
    assert all(torch.equal(averaged[k], state[k]) for k in state)
    averaged["0.0.weight"].add_(1.0)
    assert not torch.equal(averaged["0.0.weight"], state["0.0.weight"])


def test_devices_with_different_cuts_average_like_full_models() -> None:
    states = _states(3)
    cuts, samples = [2, 5, 7], [120, 80, 40]
    # Each device holds [0, cut), the server holds the rest of that device's model.
    reassembled = [
        merge_states(VGG5, *split_state(s, VGG5, c)) for s, c in zip(states, cuts, strict=True)
    ]
    averaged = fedavg(reassembled, samples)
    expected = fedavg(states, samples)
    assert all(torch.equal(averaged[k], expected[k]) for k in expected)


def test_half_precision_is_kept() -> None:
    states = [{"w": torch.full((3,), v, dtype=torch.float16)} for v in (1.0, 2.0)]
    averaged = fedavg(states, [1, 1])
    assert averaged["w"].dtype == torch.float16
    assert torch.equal(averaged["w"], torch.full((3,), 1.5, dtype=torch.float16))


def test_mismatched_states_are_rejected() -> None:
    a, b = _states(2)
    with pytest.raises(SplitError, match=r"differ in keys.*6\.bias"):
        fedavg([a, {k: v for k, v in b.items() if k != "6.bias"}], [1, 1])
    with pytest.raises(SplitError, match=r"6\.bias"):
        fedavg([a, {**b, "6.bias": torch.zeros(11)}], [1, 1])
    with pytest.raises(SplitError, match="float64"):
        fedavg([a, {**b, "6.bias": b["6.bias"].double()}], [1, 1])


@pytest.mark.parametrize(
    "weights", [[], [1.0], [1.0, 2.0, 3.0], [0.0, 0.0], [-1.0, 2.0], [math.nan, 1.0], [math.inf, 1]]
)
def test_bad_weights_are_rejected(weights: list[float]) -> None:
    with pytest.raises(SplitError):
        fedavg(_states(2), weights)


def test_no_states_is_rejected() -> None:
    with pytest.raises(SplitError):
        fedavg([], [])
