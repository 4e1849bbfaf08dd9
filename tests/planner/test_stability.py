from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner import CostTable, PlanningError, cost_table, solve, stabilise
from planner.paper import paper_testbed
from tests.planner.strategies import alphas, cost_tables

NOISE = 0.02  # "a few per cent"; the default margin of 5 % tolerates up to about 2.5 %


def _noisy(table: CostTable, rng: np.random.Generator, noise: float) -> CostTable:
    shape = table.time_s.shape
    return dataclasses.replace(
        table,
        time_s=table.time_s * rng.uniform(1 - noise, 1 + noise, shape),
        energy_j=table.energy_j * rng.uniform(1 - noise, 1 + noise, shape),
    )


@settings(max_examples=200, deadline=None)
@given(table=cost_tables(batteries=False), alpha=alphas, seed=st.integers(0, 2**32 - 1))
def test_noise_never_flips_a_cut(table: CostTable, alpha: float, seed: int) -> None:
    previous = solve(table, alpha).cuts
    noisy = _noisy(table, np.random.default_rng(seed), NOISE)
    plan = stabilise(previous, solve(noisy, alpha), noisy, alpha)
    assert plan.cuts == previous


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("uplink_mbps", [20.0, 40.0])
def test_noisy_telemetry_keeps_the_testbed_plan(alpha: float, uplink_mbps: float) -> None:
    devices, server, model = paper_testbed(uplink_mbps)
    previous = solve(cost_table(devices, server, model), alpha).cuts
    rng = np.random.default_rng(7)
    for _ in range(30):
        noisy_devices = [
            dataclasses.replace(
                d,
                forward_s=tuple(t * rng.uniform(1 - NOISE, 1 + NOISE) for t in d.forward_s),
                backward_s=tuple(t * rng.uniform(1 - NOISE, 1 + NOISE) for t in d.backward_s),
                uplink_bps=d.uplink_bps * rng.uniform(1 - NOISE, 1 + NOISE),
                downlink_bps=d.downlink_bps * rng.uniform(1 - NOISE, 1 + NOISE),
            )
            for d in devices
        ]
        table = cost_table(noisy_devices, server, model)
        assert stabilise(previous, solve(table, alpha), table, alpha).cuts == previous


def test_large_bandwidth_drop_moves_the_device() -> None:
    devices, server, model = paper_testbed(20.0)
    alpha = 0.5
    previous = solve(cost_table(devices, server, model), alpha).cuts
    assert previous["pi3b"] < model.num_blocks  # the Pi offloads at 20 Mbit/s
    slow_pi = dataclasses.replace(devices[0], uplink_bps=1e6)
    table = cost_table((slow_pi, *devices[1:]), server, model)
    candidate = solve(table, alpha)
    assert candidate.cuts["pi3b"] != previous["pi3b"]
    plan = stabilise(previous, candidate, table, alpha)
    assert plan.cuts["pi3b"] == candidate.cuts["pi3b"]
    assert plan.reasons["pi3b"].startswith("moves from cut")
    for device_id, cut in previous.items():
        if device_id != "pi3b":
            assert plan.cuts[device_id] == cut


def test_shared_max_moves_as_a_group() -> None:
    # Two identical devices set the round time together: neither can shorten it alone.
    time = [[10.0, 5.0], [10.0, 5.0]]
    energy = [[1.0, 1.0], [1.0, 1.0]]
    table = CostTable.from_arrays(time, energy)
    candidate = solve(table, 1.0)
    assert candidate.cuts == {"d0": 2, "d1": 2}
    plan = stabilise({"d0": 1, "d1": 1}, candidate, table, 1.0)
    assert plan.cuts == {"d0": 2, "d1": 2}
    assert "with 1 other devices" in plan.reasons["d0"]


def test_move_cost_holds_back_a_small_gain() -> None:
    # Moving from cut 1 to 2 saves 20 % of the energy; block 1 weighs 1 MB over a 1 Mbit/s link.
    time = [[1.0, 1.0]]
    energy = [[10.0, 8.0]]
    heavy = CostTable.from_arrays(
        time, energy, param_bytes=[0, 1_000_000], downlink_bps=[1e6], power_rx_w=[1.0]
    )
    candidate = solve(heavy, 0.0)
    assert candidate.cuts == {"d0": 2}
    kept = stabilise({"d0": 1}, candidate, heavy, 0.0)
    assert kept.cuts == {"d0": 1}
    assert kept.reasons["d0"].startswith("keeps cut 1 over the candidate's 2")
    free = stabilise({"d0": 1}, candidate, heavy, 0.0, move_s_per_byte=0.0)
    assert free.cuts == {"d0": 2}
    # With the margin at 0 but the real link, moving still costs 8 s * 1 W = 8 J > 2 J of gain.
    assert stabilise({"d0": 1}, candidate, heavy, 0.0, margin=0.0).cuts == {"d0": 1}


def test_margin_holds_back_a_tiny_gain() -> None:
    table = CostTable.from_arrays([[1.0, 1.0]], [[10.0, 9.9]])
    candidate = solve(table, 0.0)
    assert stabilise({"d0": 1}, candidate, table, 0.0).cuts == {"d0": 1}
    assert stabilise({"d0": 1}, candidate, table, 0.0, margin=0.0).cuts == {"d0": 2}


def test_previous_cut_edge_cases() -> None:
    time = [[1.0, np.inf, 2.0], [1.0, 3.0, 2.0], [1.0, 3.0, 2.0]]
    energy = [[1.0, np.inf, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    table = CostTable.from_arrays(time, energy, battery_fraction=[None, None, 0.05])
    candidate = solve(table, 1.0)
    assert candidate.cuts == {"d0": 1, "d1": 1, "d2": 1}
    assert stabilise(None, candidate, table, 1.0) is candidate
    plan = stabilise({"d0": 2, "d2": 3}, candidate, table, 1.0)
    assert plan.cuts == {"d0": 1, "d1": 1, "d2": 1}
    assert "no longer feasible" in plan.reasons["d0"]
    assert "no previous cut" in plan.reasons["d1"]
    assert "forced" in plan.reasons["d2"]  # the battery rule outranks hysteresis
    same = stabilise({"d0": 1, "d1": 1, "d2": 1}, candidate, table, 1.0)
    assert same.reasons["d1"].startswith("keeps cut 1, as the candidate does")


def test_invalid_arguments() -> None:
    table = CostTable.from_arrays([[1.0]], [[1.0]])
    candidate = solve(table, 0.5)
    with pytest.raises(PlanningError) as err:
        stabilise({}, candidate, table, 0.4)
    assert err.value.field == "alpha"
    with pytest.raises(PlanningError) as err:
        stabilise({}, candidate, table, 0.5, margin=-1.0)
    assert err.value.field == "margin"
    other = CostTable.from_arrays([[1.0]], [[1.0]], device_ids=["x"])
    with pytest.raises(PlanningError) as err:
        stabilise({}, candidate, other, 0.5)
    assert err.value.field == "candidate"
