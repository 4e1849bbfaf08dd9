"""The accuracy cost of each wire format at each cut, measured on held-out data.

Two constructed models make the expected answer known: ``threshold_net`` passes one feature
``a`` in [0, 1] through cut 1 and predicts class 1 when ``a > THRESHOLD``; with ``a`` far from
the threshold no format can change a prediction, near it int4's coarse codes (1/15 of the
range) move samples across it.
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from edge_service.wire_calibration import (
    FormatAccuracy,
    WireAccuracy,
    WireCalibrationError,
    calibrate_wire_formats,
    model_fingerprint,
    upper_bound_points,
)
from schemas.messages import WIRE_DTYPES
from splitnn import ArrayDataset, ModelSpec, build_model, num_blocks

THRESHOLD = 0.55
SMALL = ModelSpec("small_cnn", (1, 8, 8), 10)


def threshold_net() -> nn.Sequential:
    """Block 0 passes the input (N x 1 x 1) through; block 1 scores class 1 by ``a - THRESHOLD``."""
    return nn.Sequential(nn.Identity(), nn.Sequential(nn.Flatten(), nn.Linear(1, 2)))


THRESHOLD_NET = ModelSpec(f"{__name__}:threshold_net", (1, 1), 2)  # after the function it names


def threshold_state() -> dict[str, torch.Tensor]:
    return {
        "1.1.weight": torch.tensor([[0.0], [1.0]]),
        "1.1.bias": torch.tensor([0.0, -THRESHOLD]),
    }


def threshold_data(values: np.ndarray) -> ArrayDataset:
    x = values.astype(np.float32).reshape(-1, 1, 1)
    return ArrayDataset(x, (values > THRESHOLD).astype(np.int64), 2, "threshold")


def far_from_threshold(n: int, seed: int = 0) -> ArrayDataset:
    """Values in [0, 0.3] and [0.8, 1]: beyond int4's rounding error (1/30) of the threshold."""
    rng = np.random.default_rng(seed)
    low, high = rng.uniform(0, 0.3, n // 2), rng.uniform(0.8, 1.0, n - n // 2)
    return threshold_data(np.concatenate([low, high, [1.0]]))


def near_threshold(n: int, seed: int = 0) -> ArrayDataset:
    return threshold_data(np.random.default_rng(seed).uniform(0, 1, n))


@pytest.fixture(scope="module")
def small_model() -> tuple[dict[str, torch.Tensor], ArrayDataset]:
    torch.manual_seed(0)
    state = build_model(SMALL).state_dict()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 1, 8, 8)).astype(np.float32)
    return state, ArrayDataset(x, rng.integers(0, 10, 96), 10, "noise")


def test_every_cut_and_format_of_a_real_model_is_measured(small_model):
    state, data = small_model
    result = calibrate_wire_formats(SMALL, state, data, samples=64, batch_size=16, round_no=3)
    cuts = range(1, num_blocks(SMALL))
    assert set(result.entries) == {(c, fmt) for c in cuts for fmt in WIRE_DTYPES}
    assert result.cuts == tuple(cuts)
    assert (result.samples, result.round_no) == (64, 3)
    assert result.elapsed_s > 0
    assert result.fingerprint == model_fingerprint(SMALL, state)
    for (cut, fmt), entry in result.entries.items():
        assert (entry.cut, entry.format, entry.samples) == (cut, fmt, 64)
        assert entry.unusable is None
        assert math.isclose(
            entry.cost_points, 100 * (entry.accuracy_float - entry.accuracy_format), abs_tol=1e-9
        )
        assert entry.upper_points >= entry.cost_points
    for cut in cuts:
        exact = result.entries[cut, "float32"]
        assert (exact.cost_points, exact.upper_points, exact.grad_rel_error) == (0, 0, 0)
        assert exact.accuracy_format == exact.accuracy_float
        # The backward path: fewer bits, larger error, but never none for a quantised format.
        errors = [result.entries[cut, fmt].grad_rel_error for fmt in ("float16", "int8", "int4")]
        assert 0 < errors[0] < errors[1] < errors[2] < 0.5


def test_the_result_is_reproducible_and_the_state_is_untouched(small_model):
    state, data = small_model
    before = {k: v.clone() for k, v in state.items()}
    first = calibrate_wire_formats(SMALL, state, data, samples=32, seed=5, cuts=[2])
    again = calibrate_wire_formats(SMALL, state, data, samples=32, seed=5, cuts=[2])
    assert first.entries == again.entries
    assert all(torch.equal(before[k], state[k]) for k in state)


def test_the_fingerprint_follows_the_weights(small_model):
    state, _ = small_model
    changed = dict(state)
    changed["0.0.bias"] = state["0.0.bias"] + 1e-3
    assert model_fingerprint(SMALL, state) == model_fingerprint(SMALL, dict(state))
    assert model_fingerprint(SMALL, state) != model_fingerprint(SMALL, changed)


def test_formats_that_cannot_change_a_prediction_cost_nothing():
    result = calibrate_wire_formats(
        THRESHOLD_NET, threshold_state(), far_from_threshold(600), samples=512
    )
    for fmt in WIRE_DTYPES:
        entry = result.entries[1, fmt]
        assert entry.accuracy_float == entry.accuracy_format == 1.0
        assert (entry.worse, entry.better, entry.cost_points) == (0, 0, 0.0)


def test_with_no_changed_prediction_the_bound_shrinks_with_the_samples():
    bounds = []
    for samples in (32, 128, 512):
        result = calibrate_wire_formats(
            THRESHOLD_NET, threshold_state(), far_from_threshold(600), samples=samples
        )
        entry = result.entries[1, "int4"]
        assert entry.cost_points == 0
        bounds.append(entry.upper_points)
    assert bounds[0] > bounds[1] > bounds[2] > 0
    assert bounds[2] == pytest.approx(164.5 / 514, rel=1e-3)  # about 0.32 points
    assert bounds[2] < 1.0 < bounds[0]


def test_int4_flips_predictions_near_the_threshold():
    result = calibrate_wire_formats(
        THRESHOLD_NET, threshold_state(), near_threshold(2000), samples=2000, batch_size=100
    )
    int4, int8 = result.entries[1, "int4"], result.entries[1, "int8"]
    assert int4.accuracy_float == 1.0
    # int4 rounds a in (0.55, 0.567) down to 8/15 = 0.533: about 1.7% of the samples.
    assert int4.worse > 10
    assert int4.better == 0
    assert 0.5 < int4.cost_points < 4.0
    assert int4.upper_points > int4.cost_points
    assert int8.cost_points < int4.cost_points  # 17 times finer codes
    assert not result.allowed(1, "int4", 1.0)
    assert result.allowed(1, "int4", 10.0)
    assert result.allowed(1, "int8", 1.0)


def test_quantisation_is_per_training_batch_as_on_the_wire():
    # One outlier makes int4's step 40 / 15 in its batch: every value of [0, 1] there reads 0.
    values = np.random.default_rng(0).uniform(0, 1, 1000)
    values[0] = 40.0
    data = threshold_data(values)

    def int4_cost(batch_size: int) -> float:
        result = calibrate_wire_formats(
            THRESHOLD_NET, threshold_state(), data, samples=1000, batch_size=batch_size,
            formats=["int4"],
        )  # fmt: skip
        return result.entries[1, "int4"].cost_points

    assert int4_cost(1000) > 30  # one batch: all samples above the threshold are lost
    assert int4_cost(10) < 3  # only the outlier's batch of 10


def test_float16_overflow_makes_the_format_unusable():
    values = np.random.default_rng(0).uniform(0, 1, 64)
    values[3] = 1e6  # beyond float16's 65504
    result = calibrate_wire_formats(THRESHOLD_NET, threshold_state(), threshold_data(values))
    entry = result.entries[1, "float16"]
    assert entry.unusable == "activations overflow float16"
    assert math.isinf(entry.upper_points)
    assert not result.allowed(1, "float16", 100.0)
    assert result.why_not(1, "float16", 1.0) == (
        "float16 at cut 1: unusable, activations overflow float16"
    )
    assert result.entries[1, "int8"].unusable is None  # a quantised format's range adapts


def _accuracy(upper: float, unusable: str | None = None) -> FormatAccuracy:
    return FormatAccuracy(2, "int4", 512, 0.9, 0.89, 9, 2, 1.37, upper, 0.1, unusable)


def test_allowed_compares_the_upper_bound_with_the_bound():
    result = WireAccuracy({(2, "int4"): _accuracy(1.4)}, "abc", 7, 512)
    assert not result.allowed(2, "int4", 1.0)
    assert result.allowed(2, "int4", 1.4)
    assert result.allowed(2, "float32", 0.0)
    assert result.allowed(5, "float32", 0.0)  # exact everywhere, measured or not
    assert not result.allowed(3, "int4", 100.0)  # not measured
    assert not result.allowed(2, "int8", 100.0)
    assert not result.allowed(2, "int4", math.nan)
    assert result.allowed_formats(2, 2.0) == ("float32", "int4")
    assert result.allowed_formats(2, 1.0) == ("float32",)


def test_why_not_is_one_line_with_the_numbers():
    result = WireAccuracy({(2, "int4"): _accuracy(1.4), (3, "int8"): _accuracy(0.3217)}, "", 1, 512)
    assert result.why_not(2, "int4", 1.0) == (
        "int4 at cut 2: accuracy cost up to 1.4 points > bound 1.0 (512 held-out samples)"
    )
    assert result.why_not(3, "int8", 1.0) == (
        "int8 at cut 3: accuracy cost up to 0.32 points <= bound 1.0 (512 held-out samples)"
    )
    assert result.why_not(2, "float32", 1.0) == "float32 at cut 2: exact, no accuracy cost"
    assert result.why_not(4, "int4", 1.0) == "int4 at cut 4: accuracy cost not measured"


def test_the_entries_cannot_be_changed_afterwards():
    entries = {(2, "int4"): _accuracy(1.4)}
    result = WireAccuracy(entries, "", None, 512)
    entries.clear()
    assert (2, "int4") in result.entries
    with pytest.raises(TypeError):
        result.entries[2, "int8"] = _accuracy(0.1)  # type: ignore[index]


def test_a_result_pickles_and_copies():
    result = WireAccuracy({(2, "int4"): _accuracy(1.4)}, "abc", 7, 512, 1.5)
    assert pickle.loads(pickle.dumps(result)) == result
    assert copy.deepcopy(result) == result


def test_the_upper_bound_counts_both_directions_of_change():
    assert upper_bound_points(0, 0, 512) == pytest.approx(164.49 / 514, rel=1e-3)
    # Changes that cancel cost nothing but widen the bound; one-sided changes cost.
    assert 0 < upper_bound_points(0, 0, 512) < upper_bound_points(5, 5, 512)
    assert upper_bound_points(5, 5, 512) < upper_bound_points(10, 0, 512)
    assert upper_bound_points(10, 0, 512) > 100 * 10 / 512
    assert upper_bound_points(0, 30, 512) < 0  # the format helps, beyond doubt
    with pytest.raises(WireCalibrationError):
        upper_bound_points(3, 2, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"formats": ["float64"]}, "not wire formats: 'float64'"),
        ({"formats": ["int8", "int2"]}, "not wire formats: 'int2'"),
        ({"cuts": [0]}, "cuts must be ints in 1..4"),
        ({"cuts": [5]}, "cuts must be ints in 1..4 \\(cut 5 sends nothing\\)"),
        ({"cuts": [2, 9]}, "got 9"),
        ({"cuts": [True]}, "got True"),
        ({"cuts": [1.0]}, "got 1.0"),
        ({"samples": 0}, "samples must be an int >= 1"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
    ],
)
def test_bad_arguments_are_calibration_errors(small_model, kwargs, message):
    state, data = small_model
    with pytest.raises(WireCalibrationError, match=message):
        calibrate_wire_formats(SMALL, state, data, **kwargs)


def test_empty_data_is_a_calibration_error(small_model):
    state, data = small_model
    with pytest.raises(WireCalibrationError, match="no held-out data"):
        calibrate_wire_formats(SMALL, state, data.subset(np.arange(0)))


def test_data_that_does_not_fit_the_model_is_a_calibration_error(small_model):
    state, _ = small_model
    wide = ArrayDataset(np.zeros((4, 3, 8, 8), np.float32), np.zeros(4, np.int64), 10, "rgb")
    with pytest.raises(WireCalibrationError, match="does not fit small_cnn"):
        calibrate_wire_formats(SMALL, state, wide)
    bad_labels = ArrayDataset(np.zeros((4, 1, 8, 8), np.float32), np.full(4, 12), 10, "labels")
    with pytest.raises(WireCalibrationError, match="labels"):
        calibrate_wire_formats(SMALL, state, bad_labels)


def test_a_state_that_does_not_fit_the_spec_is_a_calibration_error(small_model):
    state, data = small_model
    missing = {k: v for k, v in state.items() if k != "0.0.weight"}
    with pytest.raises(WireCalibrationError, match=r"state does not fit small_cnn.*0\.0\.weight"):
        calibrate_wire_formats(SMALL, missing, data)
    wrong_shape = {**state, "0.0.bias": torch.zeros(3)}
    with pytest.raises(WireCalibrationError, match="shape mismatch"):
        calibrate_wire_formats(SMALL, wrong_shape, data)


def test_a_diverged_model_is_a_calibration_error(small_model):
    state, data = small_model
    broken = {**state, "0.0.bias": torch.full_like(state["0.0.bias"], math.nan)}
    with pytest.raises(WireCalibrationError, match="activations at cut 1 are not finite"):
        calibrate_wire_formats(SMALL, broken, data, samples=8)
