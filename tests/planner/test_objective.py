from __future__ import annotations

import math

import numpy as np
import pytest

from planner import (
    CostTable,
    Normalisation,
    PlanningError,
    build_objective,
    energy_weight,
    plan_for_cuts,
)

INF = math.inf


def test_reference_is_the_all_on_device_plan() -> None:
    table = CostTable.from_arrays(
        [[1.0, 9.0, 5.0], [2.0, 1.0, 7.0]], [[1.0, 1.0, 2.0], [1.0, 1.0, 3.0]]
    )
    assert Normalisation.reference(table) == Normalisation(time_s=7.0, energy_j=5.0)


def test_reference_falls_back_to_deepest_common_cut() -> None:
    # Cut 4 is infeasible for d1 and cut 3 for d0: cuts 1 and 2 are common, 2 is the deepest.
    table = CostTable.from_arrays(
        [[1.0, 9.0, INF, 5.0], [4.0, 1.0, 3.0, INF]], [[1.0, 1.0, INF, 2.0], [6.0, 2.0, 1.0, INF]]
    )
    assert Normalisation.reference(table) == Normalisation(time_s=9.0, energy_j=3.0)


def test_reference_falls_back_to_each_devices_deepest_cut() -> None:
    table = CostTable.from_arrays(
        [[2.0, 1.0, INF], [INF, INF, 7.0]], [[5.0, 6.0, INF], [INF, INF, 1.0]]
    )
    assert Normalisation.reference(table) == Normalisation(time_s=7.0, energy_j=7.0)


def test_reference_replaces_zero_terms_by_one() -> None:
    table = CostTable.from_arrays([[0.0, 0.0]], [[0.0, 0.0]])
    assert Normalisation.reference(table) == Normalisation(1.0, 1.0)


def test_reference_ignores_devices_sitting_out() -> None:
    table = CostTable.from_arrays([[1.0, 5.0], [1.0, 50.0]], [[1.0, 2.0], [1.0, 20.0]])
    participants = np.array([True, False])
    assert Normalisation.reference(table, participants) == Normalisation(5.0, 2.0)
    sit_out = CostTable.from_arrays(
        [[1.0, 5.0], [1.0, 50.0]], [[1.0, 2.0], [1.0, 20.0]], battery_fraction=[None, 0.01]
    )
    objective = build_objective(sit_out, 0.5, low_battery="sit_out")
    assert objective.normalisation == Normalisation(5.0, 2.0)
    assert objective.modes == ("free", "sit_out")


def test_normalisation_rejects_bad_scales() -> None:
    for bad in (0.0, -1.0, INF, math.nan):
        with pytest.raises(PlanningError):
            Normalisation(bad, 1.0)


def test_energy_weight() -> None:
    assert energy_weight(None, 0.15) == 1.0
    assert energy_weight(1.0, 0.15) == 1.0
    assert energy_weight(0.5, 0.15) == 2.0
    assert energy_weight(0.05, 0.15) == pytest.approx(1 / 0.15)


def test_modes_and_weights() -> None:
    table = CostTable.from_arrays(
        [[1.0], [1.0], [1.0]], [[1.0], [1.0], [1.0]], battery_fraction=[None, 0.5, 0.1]
    )
    objective = build_objective(table, 0.5)
    assert objective.modes == ("free", "free", "forced")
    assert objective.weights.tolist() == pytest.approx([1.0, 2.0, 1 / 0.15])
    assert build_objective(table, 0.5, battery_floor=0.05).modes == ("free", "free", "free")


def test_value() -> None:
    table = CostTable.from_arrays([[1.0, 4.0], [2.0, INF]], [[3.0, 1.0], [2.0, INF]])
    objective = build_objective(table, 0.25, normalisation=Normalisation(2.0, 4.0))
    # cuts (2, 1): max 4, energy 1 + 2 -> 0.25 * 4 / 2 + 0.75 * 3 / 4
    assert objective.value(np.array([1, 0])) == pytest.approx(0.5 + 0.5625)
    assert objective.value(np.array([1, 1])) == INF
    assert objective.value(np.array([-1, 0])) == pytest.approx(0.25 * 1.0 + 0.75 * 0.5)
    assert objective.value(np.array([-1, -1])) == 0.0


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_federated_learning_scores_one(alpha: float) -> None:
    rng = np.random.default_rng(1)
    table = CostTable.from_arrays(rng.uniform(1, 9, (4, 5)), rng.uniform(1, 9, (4, 5)))
    assert plan_for_cuts(table, alpha, 5).objective == pytest.approx(1.0)


def test_invalid_settings() -> None:
    table = CostTable.from_arrays([[1.0]], [[1.0]])
    for floor in (0.0, 1.5):
        with pytest.raises(PlanningError) as err:
            build_objective(table, 0.5, battery_floor=floor)
        assert err.value.field == "battery_floor"
    with pytest.raises(PlanningError) as err:
        build_objective(table, 0.5, low_battery="nap")  # type: ignore[arg-type]
    assert err.value.field == "low_battery"
