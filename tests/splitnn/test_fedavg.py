import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from splitnn import (
    FedAvgSum,
    ModelSpec,
    SplitError,
    build_model,
    fedavg,
    merge_states,
    split_state,
)

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


# --- FedAvg as the parts arrive -------------------------------------------------------------


def _random_state(seed: int) -> dict[str, Tensor]:
    """A small model state with what a real one holds: float32 weights, BatchNorm statistics
    and an int64 counter, and a float16 tensor."""
    g = torch.Generator().manual_seed(seed)
    return {
        "0.0.weight": torch.randn(4, 3, generator=g) * 10,
        "0.1.running_mean": torch.randn(4, generator=g),
        "0.1.running_var": torch.rand(4, generator=g) + 0.5,
        "0.1.num_batches_tracked": torch.randint(0, 1000, (), generator=g),
        "1.half": torch.randn(5, generator=g).half(),
    }


@settings(max_examples=60, deadline=None)
@given(
    seeds=st.lists(st.integers(0, 2**31), min_size=1, max_size=6),
    weights=st.lists(
        st.one_of(st.integers(1, 5000).map(float), st.floats(0.01, 1e4)), min_size=6, max_size=6
    ),
    left_out=st.sets(st.integers(0, 5), max_size=5),
    order=st.randoms(use_true_random=False),
)
def test_the_running_sum_equals_the_average_of_the_parts_it_was_given(
    seeds: list[int], weights: list[float], left_out: set[int], order: random.Random
) -> None:
    parts = [(_random_state(seed), weights[i]) for i, seed in enumerate(seeds)]
    # A late device's part never reaches the sum; the rest arrive in any order.
    kept = [p for i, p in enumerate(parts) if i not in left_out] or parts[:1]
    arrivals = list(kept)
    order.shuffle(arrivals)
    total = FedAvgSum()
    for state, weight in arrivals:
        total.add(state, weight)
    assert total.parts == len(kept)
    streamed = total.average()
    batch = fedavg([s for s, _ in kept], [w for _, w in kept])
    assert streamed.keys() == batch.keys()
    for key, expected in batch.items():
        got = streamed[key]
        assert got.dtype == expected.dtype
        assert got.shape == expected.shape
        if expected.is_floating_point():
            torch.testing.assert_close(got, expected)
        else:
            # The same rounding of the weighted mean; at an exact tie (x.5) the two summation
            # orders may land either side of it.
            exact = math.fsum(float(s[key]) * w for s, w in kept) / math.fsum(w for _, w in kept)
            tie = abs(exact - math.floor(exact) - 0.5) < 1e-6
            assert abs(int(got) - int(expected)) <= (1 if tie else 0), (exact, got, expected)


def test_the_running_sum_of_real_models_equals_fedavg() -> None:
    states, samples = _states(3), [120, 80, 40]
    total = FedAvgSum()
    for state, n in zip(states, samples, strict=True):
        total.add(state, n)
    streamed, batch = total.average(), fedavg(states, samples)
    for key, expected in batch.items():
        torch.testing.assert_close(streamed[key], expected)
    assert torch.equal(streamed["0.1.num_batches_tracked"], batch["0.1.num_batches_tracked"])


def test_a_single_part_comes_back_exactly() -> None:
    (state,) = _states(1)
    total = FedAvgSum()
    total.add(state, 37)
    assert all(torch.equal(total.average()[k], state[k]) for k in state)


def test_the_running_sum_rejects_what_fedavg_rejects() -> None:
    a, b = _states(2)
    total = FedAvgSum()
    with pytest.raises(SplitError, match="no part"):
        total.average()
    with pytest.raises(SplitError, match="weight"):
        total.add(a, math.nan)
    total.add(a, 0)
    with pytest.raises(SplitError, match="sum to > 0"):
        total.average()
    with pytest.raises(SplitError, match=r"6\.bias"):
        total.add({**b, "6.bias": torch.zeros(11)}, 1)
    total.add(b, 2)
    assert all(torch.equal(total.average()[k], b[k]) for k in b)


@settings(max_examples=60, deadline=None)
@given(
    seeds=st.lists(st.integers(0, 2**31), min_size=1, max_size=6),
    weights=st.lists(st.floats(0.01, 1e4), min_size=6, max_size=6),
    replica_of=st.lists(st.integers(0, 2), min_size=6, max_size=6),
)
def test_merged_replica_sums_equal_one_fedavg_over_every_part(
    seeds: list[int], weights: list[float], replica_of: list[int]
) -> None:
    """Hierarchical FedAvg: each replica sums its devices' parts, the coordinator merges the
    replicas' partial sums, and the average is one FedAvg over every part."""
    parts = [(_random_state(seed), weights[i]) for i, seed in enumerate(seeds)]
    replicas: dict[int, FedAvgSum] = {}
    for i, (state, weight) in enumerate(parts):
        replicas.setdefault(replica_of[i], FedAvgSum()).add(state, weight)
    coordinator = FedAvgSum()
    for replica in replicas.values():
        coordinator.merge(replica.partial())
    assert coordinator.parts == len(parts)
    merged = coordinator.average()
    batch = fedavg([s for s, _ in parts], [w for _, w in parts])
    for key, expected in batch.items():
        assert merged[key].dtype == expected.dtype
        if expected.is_floating_point():
            torch.testing.assert_close(merged[key], expected)
        else:
            assert abs(int(merged[key]) - int(expected)) <= 1  # an x.5 tie may round either way


def test_a_partial_sum_is_checked_before_it_is_merged() -> None:
    a, b = _states(2)
    one, other = FedAvgSum(), FedAvgSum()
    one.add(a, 3)
    other.add({**b, "6.bias": torch.zeros(11)}, 1)
    with pytest.raises(SplitError, match=r"6\.bias"):
        one.merge(other.partial())
    with pytest.raises(SplitError, match="no part"):
        FedAvgSum().partial()
    partial = one.partial()
    with pytest.raises(SplitError, match="weight"):
        one.merge(type(partial)(partial.sums, (math.inf,), partial.dtypes))
    assert one.parts == 1  # nothing of a refused partial was added
