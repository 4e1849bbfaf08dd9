"""Choosing each device's wire format with its cut (planner.wire_choice)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner import (
    PlanningError,
    WireOption,
    brute_force,
    cost_table,
    solve,
    solve_with_formats,
    wire_tables,
)
from planner.objective import build_objective
from planner.paper import paper_testbed
from planner.policies import POLICIES, PolicyInputs

FLOAT32 = WireOption("float32", 1.0)
FLOAT16 = WireOption("float16", 0.5, codec_s_per_byte=1e-10, edge_codec_s_per_byte=1e-10)
INT8 = WireOption("int8", 0.25, codec_s_per_byte=5e-10, edge_codec_s_per_byte=2e-10)
INT4 = WireOption("int4", 0.125, codec_s_per_byte=6e-10, edge_codec_s_per_byte=4e-10)


def _testbed(link_mbps: float = 20.0, samples: int = 200):
    return paper_testbed(link_mbps, samples)


def _exhaustive_objective(wire, alpha: float) -> float:
    """J of every combination of (cut, format), enumerated directly from the per-format tables."""
    norm = build_objective(wire.base, alpha).normalisation
    n, cuts, formats = wire.time_s.shape
    cells = [
        [(c, k) for c in range(cuts) for k in range(formats) if math.isfinite(wire.time_s[d, c, k])]
        for d in range(n)
    ]
    best = math.inf
    for combo in itertools.product(*cells):
        time = max(wire.time_s[d, c, k] for d, (c, k) in enumerate(combo))
        energy = sum(wire.energy_j[d, c, k] for d, (c, k) in enumerate(combo))
        best = min(best, alpha * time / norm.time_s + (1 - alpha) * energy / norm.energy_j)
    return best


@settings(max_examples=40, deadline=None)
@given(
    alpha=st.floats(0.0, 1.0),
    link_mbps=st.sampled_from([2.0, 20.0, 200.0]),
    held=st.lists(st.sets(st.integers(1, 6), max_size=6), min_size=3, max_size=3),
    codec=st.floats(0.0, 1e-6),
)
def test_format_choice_matches_brute_force(
    alpha: float, link_mbps: float, held: list[set[int]], codec: float
) -> None:
    devices, server, model = _testbed(link_mbps)
    devices = devices[:3]
    options = {
        d.device_id: (
            FLOAT32,
            dataclasses.replace(INT8, codec_s_per_byte=codec, cuts=frozenset(cuts) or None),
            dataclasses.replace(INT4, cuts=frozenset(range(1, 8)) - cuts),
        )
        for d, cuts in zip(devices, held, strict=True)
    }
    wire = wire_tables(devices, server, model, options)
    plan = solve_with_formats(wire, alpha)
    exhaustive = solve_with_formats(wire, alpha, exhaustive=True)
    reference = _exhaustive_objective(wire, alpha)
    assert plan.objective == pytest.approx(reference, rel=1e-9)
    assert exhaustive.objective == pytest.approx(reference, rel=1e-9)
    for item in plan.assignments:
        assert item.cut is not None
        fmt = plan.formats[item.device_id]
        assert (item.time_s, item.energy_j) == wire.cell(item.device_id, item.cut, fmt)
        option = next(o for o in options[item.device_id] if o.name == fmt)
        assert option.cuts is None or item.cut in option.cuts or item.cut == model.num_blocks


def test_one_format_is_the_plain_solver() -> None:
    devices, server, model = _testbed()
    wire = wire_tables(devices, server, model, {d.device_id: (FLOAT32,) for d in devices})
    plan = solve_with_formats(wire, 0.5)
    plain = solve(cost_table(devices, server, model), 0.5)
    assert plan.cuts == plain.cuts
    assert plan.objective == pytest.approx(plain.objective)
    assert set(plan.formats.values()) == {"float32"}


def test_narrow_formats_win_on_a_slow_link_and_say_why() -> None:
    devices, server, model = _testbed(20.0)
    options = {d.device_id: (FLOAT32, FLOAT16, INT8, INT4) for d in devices}
    plan = solve_with_formats(wire_tables(devices, server, model, options), 0.5)
    plain = solve(cost_table(devices, server, model), 0.5)
    assert plan.objective < plain.objective
    split = [a for a in plan.assignments if a.cut is not None and a.cut < model.num_blocks]
    assert split, "at 20 Mbit/s with int4 allowed some device must split"
    for item in split:
        assert plan.formats[item.device_id] == "int4"
        assert "wire int4:" in item.reason
        assert "less than float32" in item.reason


def test_held_back_formats_are_not_used_and_the_reason_names_them() -> None:
    devices, server, model = _testbed(20.0)
    int4 = dataclasses.replace(INT4, cuts=frozenset({5, 6}), held_back="int4 cost 2.1 points")
    options = {d.device_id: (FLOAT32, INT8, int4) for d in devices}
    plan = solve_with_formats(wire_tables(devices, server, model, options), 0.5)
    for item in plan.assignments:
        assert item.cut is not None
        if plan.formats[item.device_id] == "int4":
            assert item.cut in (5, 6)
        elif item.cut < model.num_blocks:
            assert "int4 cost 2.1 points" in item.reason


def test_costly_codec_is_not_chosen() -> None:
    devices, server, model = _testbed(1000.0)
    slow = dataclasses.replace(INT4, codec_s_per_byte=1e-3)  # a second per MB: never pays
    options = {d.device_id: (FLOAT32, slow) for d in devices}
    plan = solve_with_formats(wire_tables(devices, server, model, options), 0.5)
    assert set(plan.formats.values()) == {"float32"}


def test_hysteresis_keeps_a_previous_cut_in_its_best_format() -> None:
    devices, server, model = _testbed(20.0)
    options = {d.device_id: (FLOAT32, INT8) for d in devices}
    wire = wire_tables(devices, server, model, options)
    first = solve_with_formats(wire, 0.5)
    again = solve_with_formats(wire, 0.5, previous=first.cuts, move_s_per_byte=0.0)
    assert again.cuts == first.cuts
    assert again.formats == first.formats
    brute = brute_force(
        wire.expanded, 0.5, normalisation=build_objective(wire.base, 0.5).normalisation
    )
    assert again.objective == pytest.approx(brute.objective)


def test_ares_policy_chooses_formats_and_baselines_do_not() -> None:
    devices, server, model = _testbed(20.0)
    options = {d.device_id: (FLOAT32, INT8) for d in devices}
    wire = wire_tables(devices, server, model, options)
    table = cost_table(devices, server, model)
    ares = POLICIES.create("ares").decide(PolicyInputs(table=table, alpha=0.5, wire=wire))
    assert "int8" in ares.formats.values()
    fl = POLICIES.create("fl").decide(PolicyInputs(table=table, alpha=0.5, wire=wire))
    assert fl.formats == {}


def test_bad_options() -> None:
    devices, server, model = _testbed()
    with pytest.raises(PlanningError, match="twice"):
        wire_tables(devices, server, model, {devices[0].device_id: (FLOAT32, FLOAT32)})
    with pytest.raises(PlanningError, match="unknown devices"):
        wire_tables(devices, server, model, {"ghost": (FLOAT32,)})
    with pytest.raises(PlanningError, match="wire_scale"):
        WireOption("int8", 0.0)
