from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner import (
    CostTable,
    LowBatteryPolicy,
    Normalisation,
    PlanningError,
    brute_force,
    plan_for_cuts,
    solve,
)
from planner.objective import least_energy_columns
from tests.planner.strategies import alphas, cost_tables


def _rel_close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


@settings(max_examples=200, deadline=None)
@given(
    table=cost_tables(),
    alpha=alphas,
    low_battery=st.sampled_from(["least_energy", "sit_out"]),
)
def test_solve_matches_brute_force(
    table: CostTable, alpha: float, low_battery: LowBatteryPolicy
) -> None:
    plan = solve(table, alpha, low_battery=low_battery)
    reference = brute_force(table, alpha, low_battery=low_battery)
    assert _rel_close(plan.objective, reference.objective)
    for assignment in plan.assignments:
        row = table.row(assignment.device_id)
        battery = table.battery_fraction[row]
        low = battery is not None and battery < plan.battery_floor
        if low and low_battery == "sit_out":
            assert assignment.cut is None
            continue
        assert assignment.cut is not None
        assert math.isfinite(table.time_s[row, assignment.cut - 1])
        assert assignment.time_s == table.time_s[row, assignment.cut - 1]
        if low:
            assert assignment.cut - 1 == least_energy_columns(table.time_s, table.energy_j)[row]
        assert assignment.reason


@settings(max_examples=100, deadline=None)
@given(table=cost_tables(batteries=False))
def test_alpha_one_minimises_max_time(table: CostTable) -> None:
    plan = solve(table, 1.0)
    options = [np.flatnonzero(np.isfinite(row)) for row in table.time_s]
    best = min(
        max(table.time_s[r, c] for r, c in enumerate(combo))
        for combo in itertools.product(*options)
    )
    assert plan.max_time_s == best


@settings(max_examples=100, deadline=None)
@given(table=cost_tables(batteries=False))
def test_alpha_zero_minimises_total_energy(table: CostTable) -> None:
    plan = solve(table, 0.0)
    best = float(np.sum(np.min(table.energy_j, axis=1)))
    assert _rel_close(plan.total_energy_j, best) or plan.total_energy_j == best


def test_max_couples_devices() -> None:
    # Device b is slow on cut 1 but cheap there; with alpha = 0.5 it pays to move b to cut 2
    # (faster, dearer) because the round time halves.
    time = [[10.0, 10.0], [20.0, 10.0]]
    energy = [[1.0, 1.0], [1.0, 2.0]]
    table = CostTable.from_arrays(time, energy, device_ids=["a", "b"])
    norm = Normalisation(time_s=10.0, energy_j=2.0)
    assert solve(table, 0.5, normalisation=norm).cuts == {"a": 1, "b": 2}
    # J(b on 1) = 0.5 * 20 / 10 + 0.5 * 2 / 2 = 1.5; J(b on 2) = 0.5 * 1 + 0.5 * 3 / 2 = 1.25
    assert solve(table, 0.5, normalisation=norm).objective == pytest.approx(1.25)
    assert solve(table, 0.0, normalisation=norm).cuts == {"a": 1, "b": 1}


def test_ties_go_to_lower_time_then_lower_cut() -> None:
    time = [[3.0, 1.0, 1.0, 2.0]]
    energy = [[1.0, 1.0, 1.0, 1.0]]
    table = CostTable.from_arrays(time, energy)
    assert solve(table, 0.0).cuts == {"d0": 2}


def test_threshold_ties_go_to_smaller_round_time() -> None:
    # With alpha = 0 every bound >= 4 gives the same energy; the plan should not wait longer.
    time = [[4.0, 9.0], [2.0, 8.0]]
    energy = [[1.0, 1.0], [2.0, 2.0]]
    plan = solve(CostTable.from_arrays(time, energy), 0.0)
    assert plan.cuts == {"d0": 1, "d1": 1}
    assert plan.max_time_s == 4.0


def test_infeasible_cells_are_never_chosen() -> None:
    time = [[math.inf, 5.0, 1.0], [1.0, math.inf, math.inf]]
    energy = [[math.inf, 0.0, 9.0], [3.0, math.inf, math.inf]]
    table = CostTable.from_arrays(time, energy)
    for alpha in (0.0, 0.3, 1.0):
        cuts = solve(table, alpha).cuts
        assert cuts["d1"] == 1
        assert cuts["d0"] in (2, 3)


def test_low_battery_policies() -> None:
    time = [[1.0, 5.0], [1.0, 5.0]]
    energy = [[4.0, 1.0], [4.0, 1.0]]
    table = CostTable.from_arrays(time, energy, battery_fraction=[0.1, None])
    forced = solve(table, 1.0)
    assert forced.cuts == {"d0": 2, "d1": 1}
    assert "forced" in forced.reasons["d0"]
    assert forced.max_time_s == 5.0
    out = solve(table, 1.0, low_battery="sit_out")
    assert out.cuts == {"d1": 1}
    assert out.sitting_out == frozenset({"d0"})
    assert "sits the round out" in out.reasons["d0"]
    assert out.assignment("d0").cut is None


def test_low_battery_makes_energy_count_more() -> None:
    # Two identical devices; only the cheaper cut for the half-charged one is worth its time.
    time = [[1.0, 2.0], [1.0, 2.0]]
    energy = [[3.0, 2.0], [3.0, 2.0]]
    norm = Normalisation(1.0, 1.0)
    table = CostTable.from_arrays(time, energy, battery_fraction=[1.0, 0.2])
    # J: alpha * max + (1 - alpha) * (w0 e0 + w1 e1), w = (1, 5); alpha = 0.8.
    # both on 1: 0.8 + 0.2 * 18 = 4.4; d1 on 2: 1.6 + 0.2 * 13 = 4.2;
    # both on 2: 1.6 + 0.2 * 12 = 4.0
    plan = solve(table, 0.8, normalisation=norm)
    assert plan.cuts == {"d0": 2, "d1": 2}
    assert plan.objective == pytest.approx(4.0)
    table_full = CostTable.from_arrays(time, energy, battery_fraction=[1.0, 1.0])
    # Mains-like weights: both on 1: 0.8 + 0.2 * 6 = 2.0; both on 2: 1.6 + 0.2 * 4 = 2.4.
    assert solve(table_full, 0.8, normalisation=norm).cuts == {"d0": 1, "d1": 1}


def test_everyone_sits_out() -> None:
    table = CostTable.from_arrays([[1.0]], [[1.0]], battery_fraction=[0.0])
    plan = solve(table, 0.5, low_battery="sit_out")
    assert plan.cuts == {}
    assert plan.objective == 0.0
    assert plan.max_time_s == 0.0


def test_plan_properties_and_plan_for_cuts() -> None:
    time = [[2.0, 1.0], [4.0, 3.0]]
    energy = [[1.0, 2.0], [1.0, 5.0]]
    table = CostTable.from_arrays(time, energy, device_ids=["x", "y"])
    plan = plan_for_cuts(table, 0.5, {"x": 2, "y": 1})
    assert plan.cuts == {"x": 2, "y": 1}
    assert plan.time_s == {"x": 1.0, "y": 4.0}
    assert plan.energy_j == {"x": 2.0, "y": 1.0}
    assert plan.max_time_s == 4.0
    assert plan.total_energy_j == 3.0
    # FL reference: max time 3, energy 7 -> J = 0.5 * 4 / 3 + 0.5 * 3 / 7
    assert plan.objective == pytest.approx(0.5 * 4 / 3 + 0.5 * 3 / 7)
    assert plan_for_cuts(table, 0.5, 2).objective == pytest.approx(1.0)
    with pytest.raises(PlanningError) as err:
        plan_for_cuts(table, 0.5, {"x": 3})
    assert err.value.field == "x"
    with pytest.raises(PlanningError):
        plan.assignment("z")
    blocked = CostTable.from_arrays([[1.0, math.inf]], [[1.0, math.inf]], device_ids=["x"])
    with pytest.raises(PlanningError) as err:
        plan_for_cuts(blocked, 0.5, 2)
    assert err.value.field == "x"
    assert plan_for_cuts(table, 0.5, {"x": 1}).sitting_out == frozenset({"y"})


def test_invalid_alpha() -> None:
    table = CostTable.from_arrays([[1.0]], [[1.0]])
    for alpha in (-0.1, 1.5, math.nan):
        with pytest.raises(PlanningError) as err:
            solve(table, alpha)
        assert err.value.field == "alpha"


def test_solve_scales() -> None:
    rng = np.random.default_rng(0)
    time = rng.uniform(1.0, 100.0, size=(1000, 30))
    energy = rng.uniform(1.0, 100.0, size=(1000, 30))
    time[rng.random(time.shape) < 0.1] = np.inf
    time[:, 0] = rng.uniform(1.0, 100.0, size=1000)  # keep one feasible cut per device
    energy[np.isinf(time)] = np.inf
    plan = solve(CostTable.from_arrays(time, energy), 0.5)
    assert len(plan.cuts) == 1000
