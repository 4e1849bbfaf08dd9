"""Calibration: exit heads trained on a frozen small CNN (digits), and the operating points they
give, checked against what the heads do when run, against hand-counted cases and as JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from serving.calibration import (
    EXITS_OFF,
    THRESHOLDS,
    Calibration,
    CalibrationError,
    OperatingPoint,
    calibrate,
    operating_points,
    stratified_halves,
)
from splitnn import ModelSpec, build_model, load_dataset
from splitnn.data import ArrayDataset
from splitnn.exits import build_exits, confidence, forward_with_exits

SPEC = ModelSpec("small_cnn", (1, 8, 8), 10)  # 5 blocks: exits at 1..4 by default


@pytest.fixture(scope="module")
def trained() -> dict[str, torch.Tensor]:
    """small_cnn after 3 epochs on the digits training set (about 1 s on one thread)."""
    torch.set_num_threads(1)
    data = load_dataset("digits", "train")
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(SPEC)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(3):
            order = torch.randperm(len(y))
            for start in range(0, len(y), 32):
                batch = order[start : start + 32]
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def held_out() -> ArrayDataset:
    return load_dataset("digits", "test")


@pytest.fixture(scope="module")
def calibration(trained, held_out) -> Calibration:
    torch.set_num_threads(1)
    return calibrate(SPEC, trained, held_out)


def test_the_exits_learn_and_every_cut_and_threshold_is_measured(calibration, held_out) -> None:
    assert calibration.positions == (1, 2, 3, 4)
    assert calibration.samples + calibration.train_samples == len(held_out)
    assert abs(calibration.samples - calibration.train_samples) <= 10  # halves, by class
    # Measured: full model 0.917 on the 181 validation samples; exits 0.92, 0.98, 0.98, 0.97.
    assert calibration.full_accuracy > 0.8
    assert all(accuracy > 0.8 for accuracy in calibration.exit_accuracy.values())
    assert len(calibration.points) == 5 * len(THRESHOLDS)
    for point in calibration.points:
        assert set(point.exit_fraction) == {p for p in (1, 2, 3, 4) if p <= point.cut}
        assert 0 <= point.local_fraction <= 1 + 1e-9
        assert 0 <= point.accuracy <= 1
    assert calibration.blocks == 5


def test_a_higher_threshold_never_answers_more_on_the_device(calibration) -> None:
    for cut in range(1, 6):
        fractions = [calibration.point(cut, t).local_fraction for t in THRESHOLDS]
        assert fractions == sorted(fractions, reverse=True)
    # A deeper cut offers more exits: never fewer samples leave early.
    for threshold in THRESHOLDS:
        fractions = [calibration.point(cut, threshold).local_fraction for cut in range(1, 6)]
        assert fractions == sorted(fractions)


def test_exits_off_is_the_full_model(calibration) -> None:
    for cut in range(1, 6):
        point = calibration.point(cut, EXITS_OFF)
        assert point.local_fraction == 0
        assert point.accuracy == calibration.full_accuracy


def test_low_thresholds_answer_most_samples_on_the_device(calibration) -> None:
    point = calibration.point(4, 0.5)
    assert point.local_fraction > 0.9
    assert point.accuracy > 0.8


def test_the_fallback_is_the_deepest_exit_at_or_below_the_cut(trained, held_out) -> None:
    calibration = calibrate(SPEC, trained, held_out, positions=[2, 4], epochs=5)
    deepest = calibration.deepest_exit_accuracy
    assert deepest[1] is None  # no exit on the device at cut 1
    assert deepest[2] == deepest[3] == calibration.exit_accuracy[2]
    assert deepest[4] == calibration.exit_accuracy[4]
    assert deepest[5] == calibration.full_accuracy  # cut L: the whole model is on the device
    assert calibration.point(1, 0.5).exit_fraction == {}
    assert calibration.point(1, 0.5).accuracy == calibration.full_accuracy


def test_the_points_are_what_the_stored_heads_do(calibration, trained, held_out) -> None:
    """Rebuild the heads from exit_state, run them on the validation half, replay the rule."""
    _, check = stratified_halves(held_out.y, 0.5, 0)
    model = build_model(SPEC).eval()
    model.load_state_dict(trained)
    exits = build_exits(SPEC, calibration.positions).eval()
    exits.load_state_dict(calibration.exit_state)
    with torch.no_grad():
        logits, final = forward_with_exits(model, exits, torch.from_numpy(held_out.x[check]))
    truth = torch.from_numpy(held_out.y[check])
    assert (final.argmax(1) == truth).float().mean().item() == pytest.approx(
        calibration.full_accuracy
    )
    cut, threshold = 3, 0.9
    answers, left = final.argmax(1).clone(), torch.zeros(len(truth), dtype=torch.bool)
    counts = {}
    for position in (1, 2, 3):
        top, label = confidence(logits[position])
        leaving = ~left & (top >= threshold)
        answers[leaving] = label[leaving]
        counts[position] = int(leaving.sum()) / len(truth)
        left |= leaving
    point = calibration.point(cut, threshold)
    assert point.exit_fraction == pytest.approx(counts)
    assert point.accuracy == pytest.approx((answers == truth).float().mean().item())
    for position in calibration.positions:
        accuracy = (logits[position].argmax(1) == truth).float().mean().item()
        assert calibration.exit_accuracy[position] == pytest.approx(accuracy)


def test_calibration_is_deterministic_and_leaves_the_global_rng_alone(trained, held_out) -> None:
    torch.manual_seed(123)
    first = calibrate(SPEC, trained, held_out, positions=[2], epochs=2, seed=4)
    after = torch.rand(1)
    torch.manual_seed(123)
    expected = torch.rand(1)
    second = calibrate(SPEC, trained, held_out, positions=[2], epochs=2, seed=4)
    assert torch.equal(after, expected)
    assert first.to_dict() == second.to_dict()
    assert all(torch.equal(first.exit_state[k], second.exit_state[k]) for k in first.exit_state)


def test_operating_points_by_hand() -> None:
    # Four samples, exits at 1 and 2 of a 3-block model.
    confidence_at = {1: np.array([0.9, 0.5, 0.6, 0.2]), 2: np.array([0.95, 0.8, 0.7, 0.3])}
    correct_at = {1: np.array([True, True, False, True]), 2: np.array([False, True, True, True])}
    full = np.array([True, False, True, False])
    points = operating_points(3, (1, 2), confidence_at, correct_at, full, (0.75, EXITS_OFF))
    table = {(p.cut, p.threshold): p for p in points}
    # Cut 1, t 0.75: sample 0 leaves at exit 1 (right); the rest get the full model: 1 + 1 right.
    assert table[1, 0.75].exit_fraction == {1: 0.25}
    assert table[1, 0.75].accuracy == 0.5
    # Cut 2: sample 1 (0.8) also leaves at exit 2 (right): 0 right, 1 right, 2 full right.
    assert table[2, 0.75].exit_fraction == {1: 0.25, 2: 0.25}
    assert table[2, 0.75].local_fraction == 0.5
    assert table[2, 0.75].accuracy == 0.75
    assert table[3, 0.75] == OperatingPoint(3, 0.75, {1: 0.25, 2: 0.25}, 0.75)
    assert table[3, EXITS_OFF].exit_fraction == {1: 0.0, 2: 0.0}
    assert table[3, EXITS_OFF].accuracy == 0.5


def test_json_round_trip(calibration) -> None:
    text = json.dumps(calibration.to_dict())
    again = Calibration.from_dict(json.loads(text), calibration.exit_state)
    assert again.to_dict() == calibration.to_dict()
    assert again.points == calibration.points
    assert again.deepest_exit_accuracy == calibration.deepest_exit_accuracy
    curves_only = Calibration.from_dict(json.loads(text))
    assert curves_only.exit_state == {}
    assert curves_only.point(2, 0.9) == calibration.point(2, 0.9)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("points"),
        lambda d: d.update(full_accuracy=1.5),
        lambda d: d.update(positions=[3, 1]),
        lambda d: d.update(surprise=1),
        lambda d: d["points"][0].update(exit_fraction="all"),
    ],
)
def test_a_malformed_calibration_is_one_clear_error(calibration, damage) -> None:
    data = json.loads(json.dumps(calibration.to_dict()))
    damage(data)
    with pytest.raises(CalibrationError) as caught:
        Calibration.from_dict(data)
    assert "\n" not in str(caught.value)


def test_the_halves_are_stratified() -> None:
    labels = np.repeat(np.arange(3), [10, 4, 1])
    fit, check = stratified_halves(labels, 0.5, seed=0)
    assert sorted(np.concatenate([fit, check]).tolist()) == list(range(15))
    assert np.bincount(labels[check], minlength=3).tolist() == [5, 2, 1]
    assert np.bincount(labels[fit], minlength=3).tolist() == [5, 2, 0]
    with pytest.raises(CalibrationError, match="both halves"):
        stratified_halves(np.array([0, 1]), 0.5, seed=0)
    with pytest.raises(CalibrationError, match="holdout_fraction"):
        stratified_halves(labels, 1.0, seed=0)


def test_data_of_another_shape_is_refused(trained) -> None:
    other = ArrayDataset(
        np.zeros((4, 1, 4, 4), np.float32), np.arange(4, dtype=np.int64) % 2, 10, "tiny-images"
    )
    with pytest.raises(CalibrationError, match="shape"):
        calibrate(SPEC, trained, other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_calibration_on_a_gpu_gives_cpu_tensors_and_the_same_table_shape(trained, held_out) -> None:
    on_gpu = calibrate(SPEC, trained, held_out, epochs=5, device="cuda")
    on_cpu = calibrate(SPEC, trained, held_out, epochs=5)
    assert all(t.device.type == "cpu" for t in on_gpu.exit_state.values())
    assert on_gpu.full_accuracy == pytest.approx(on_cpu.full_accuracy, abs=0.02)
    assert [(p.cut, p.threshold) for p in on_gpu.points] == [
        (p.cut, p.threshold) for p in on_cpu.points
    ]
