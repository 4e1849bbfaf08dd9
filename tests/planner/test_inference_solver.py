"""The serving solver: the cost model, the exact per-device optimum against brute force, the
accuracy floor, the pushes of link, compute and battery, the online correction, the reasons."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner import PlanningError
from planner.inference import (
    EXITS_OFF,
    ExitTable,
    InferencePlan,
    ObservedExits,
    OperatingPoint,
    ServingDevice,
    ServingEdge,
    ServingInputs,
    ServingModel,
    brute_force,
    request_cost,
    solve,
)
from planner.inference.points import Correction, exit_ratio
from schemas import PowerFigures

POWER = PowerFigures(compute_w=4.0, transmit_w=1.5, receive_w=1.0)


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


# --- a small hand-made instance: 4 blocks, exits after blocks 1 and 2 ---------------------------

MODEL = ServingModel(
    input_bytes=12_000, activation_bytes=(40_000, 10_000, 2_000, 40), answer_bytes=50
)
EDGE = ServingEdge((0.0002, 0.0002, 0.0002, 0.0001))
TABLE = ExitTable(
    num_blocks=4,
    points=tuple(
        OperatingPoint(cut, t, {1: f1} if cut == 1 else {1: f1, 2: f2}, acc)
        for t, f1, f2, acc in ((0.6, 0.5, 0.3, 0.74), (0.9, 0.3, 0.3, 0.795))
        for cut in range(1, 5)
    ),
    full_accuracy=0.80,
    exit_positions=(1, 2),
    deepest_exit_accuracy={1: 0.6, 2: 0.7, 3: 0.7},
)


def device(**changes: object) -> ServingDevice:
    base = ServingDevice(
        device_id="d",
        forward_s=(0.002, 0.002, 0.003, 0.001),
        power=POWER,
        uplink_bps=20e6,
        downlink_bps=20e6,
        exit_head_s={1: 0.0002, 2: 0.0001},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def inputs(*devices: ServingDevice, **changes: object) -> ServingInputs:
    base = ServingInputs(devices=devices or (device(),), edge=EDGE, model=MODEL, exits=TABLE)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_request_cost_matches_the_formula_by_hand():
    d = device()
    cost = request_cost(d, EDGE, MODEL, 2, 0.9, {1: 0.3, 2: 0.3})
    reach1 = 0.002 + 0.0002
    reach2 = 0.004 + 0.0003
    compute = 0.3 * reach1 + 0.3 * reach2 + 0.4 * reach2
    send = 10_000 * 8 / 20e6
    answer = 50 * 8 / 20e6
    latency = compute + 0.4 * (send + 0.005 + 0.0003 + answer)
    energy = 4.0 * compute + 1.5 * 0.4 * send + 1.0 * 0.4 * answer
    assert _close(cost.latency_s, latency)
    assert _close(cost.energy_j, energy)
    assert cost.local_fraction == pytest.approx(0.6)
    # Cut 0 sends the raw input and computes nothing; cut L sends nothing and answers locally.
    edge = request_cost(d, EDGE, MODEL, 0, EXITS_OFF, {})
    assert edge.compute_s == 0.0
    assert _close(edge.latency_s, 12_000 * 8 / 20e6 + 0.005 + 0.0007 + answer)
    local = request_cost(d, EDGE, MODEL, 4, EXITS_OFF, {})
    assert local.local_fraction == 1.0
    assert local.latency_s == pytest.approx(0.008)  # no heads evaluated with exits off
    assert local.energy_j == pytest.approx(4.0 * 0.008)


def test_every_cut_has_an_exits_off_point_with_the_full_accuracy():
    for cut in range(5):
        point = TABLE.exits_off(cut)
        assert point.accuracy == 0.80
        assert point.exit_fraction == {}
    assert TABLE.thresholds == (0.6, 0.9, EXITS_OFF)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"exit_fraction": {3: 0.2}}, "exit_fraction[3]"),
        ({"exit_fraction": {1: 0.7, 2: 0.5}}, "exit_fraction"),
        ({"accuracy": 1.5}, "accuracy"),
        ({"threshold": EXITS_OFF}, "exit_fraction"),
    ],
)
def test_bad_operating_points_name_the_field(change, field):
    with pytest.raises(PlanningError) as caught:
        OperatingPoint(**{"cut": 2, "threshold": 0.9, "exit_fraction": {1: 0.2}, **change})
    assert caught.value.field == field


def test_inputs_with_other_block_counts_are_refused():
    with pytest.raises(PlanningError, match="blocks"):
        inputs(device(forward_s=(0.1, 0.1)))
    with pytest.raises(PlanningError, match="alpha"):
        inputs(alpha=1.5)


# --- the optimum against brute force on random instances -----------------------------------------


@st.composite
def instances(draw: st.DrawFn) -> ServingInputs:
    L = draw(st.integers(1, 5))
    positions = sorted(draw(st.sets(st.integers(1, L), max_size=L)))
    thresholds = draw(st.sets(st.sampled_from([0.5, 0.7, 0.9, 1.0]), min_size=1, max_size=3))
    full = 0.85
    unit = st.floats(0.0, 1.0)
    points = []
    for t in sorted(thresholds):
        for cut in range(1, L + 1):
            here = [p for p in positions if p <= cut]
            if not here or not draw(st.booleans()):
                continue
            raw = [draw(unit) for _ in here]
            scale = draw(unit) / max(sum(raw), 1.0)
            fractions = {p: f * scale for p, f in zip(here, raw, strict=True)}
            points.append(OperatingPoint(cut, t, fractions, draw(st.floats(0.7, 0.85))))
    for cut in draw(st.sets(st.integers(0, L), max_size=2)):  # measured exits-off accuracy
        points.append(OperatingPoint(cut, EXITS_OFF, {}, draw(st.floats(0.6, 0.85))))
    table = ExitTable(L, tuple(points), full, tuple(positions))
    seconds = st.sampled_from([0.0, 0.001]) | st.floats(0.0, 0.05)
    sizes = st.integers(0, 200_000)
    model = ServingModel(
        input_bytes=draw(sizes),
        activation_bytes=tuple(draw(sizes) for _ in range(L)),
        answer_bytes=draw(st.integers(0, 100)),
        param_bytes=tuple(draw(st.integers(0, 10_000)) for _ in range(L)),
        exit_param_bytes={p: draw(st.integers(0, 1000)) for p in positions},
    )
    edge = ServingEdge(tuple(draw(seconds) for _ in range(L)))
    devices = []
    for n in range(draw(st.integers(1, 4))):
        power = PowerFigures(
            compute_w=draw(st.floats(0.0, 8.0)),
            transmit_w=draw(st.floats(0.0, 3.0)),
            receive_w=draw(st.floats(0.0, 3.0)),
        )
        allowed = draw(st.none() | st.sets(st.integers(0, L), min_size=1))
        observed = None
        if len(points) > 0 and draw(st.booleans()):
            point = draw(st.sampled_from(points))
            observed = ObservedExits(
                point.cut, point.threshold, draw(unit), draw(st.integers(0, 500))
            )
        devices.append(
            ServingDevice(
                device_id=f"d{n}",
                forward_s=tuple(draw(seconds) for _ in range(L)),
                power=power,
                uplink_bps=draw(st.floats(1e5, 1e8)),
                downlink_bps=draw(st.floats(1e5, 1e8)),
                exit_head_s={p: draw(st.floats(0.0, 0.002)) for p in positions},
                battery_fraction=draw(st.none() | st.floats(0.0, 1.0)),
                overhead_s=draw(st.floats(0.0, 0.01)),
                allowed_cuts=None if allowed is None else frozenset(allowed),
                memory_bytes=draw(st.none() | st.integers(300_000, 500_000)),
                observed=observed,
            )
        )
    return ServingInputs(
        devices=tuple(devices),
        edge=edge,
        model=model,
        exits=table,
        alpha=draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0)),
        accuracy_floor=draw(st.sampled_from([0.0, 0.01, 0.05])),
    )


@settings(max_examples=150, deadline=None)
@given(problem=instances())
def test_solve_matches_brute_force(problem: ServingInputs):
    try:
        reference = brute_force(problem)
    except PlanningError:  # nothing fits: the solver must refuse the same way
        with pytest.raises(PlanningError):
            solve(problem)
        return
    plan = solve(problem)
    for d in problem.devices:
        got, want = plan.assignment(d.device_id), reference.assignment(d.device_id)
        assert got.accuracy_met == want.accuracy_met
        assert got.forced == want.forced
        if got.forced:
            assert _close(got.energy_j, want.energy_j)
        else:
            assert _close(got.objective, want.objective)
        if got.accuracy_met:
            assert got.accuracy >= problem.accuracy_bound - 1e-12
        else:
            assert got.accuracy == pytest.approx(want.accuracy)
        assert d.allowed_cuts is None or got.cut in d.allowed_cuts
        # The vectorised prices are the scalar definition's.
        exact = request_cost(
            d, problem.edge, problem.model, got.cut, got.threshold, got.exit_fraction
        )
        assert _close(got.latency_s, exact.latency_s)
        assert _close(got.energy_j, exact.energy_j)
        assert got.reason


# --- the accuracy floor --------------------------------------------------------------------------


def test_the_accuracy_floor_keeps_out_settings_that_lose_more_than_it():
    slow_link = device(uplink_bps=0.2e6)
    # Threshold 0.9 loses 0.5 points, 0.6 loses 6: with the 1-point floor only 0.9 may run.
    plan = solve(inputs(slow_link, alpha=0.0))
    chosen = plan.assignment("d")
    assert chosen.threshold == 0.9
    assert chosen.accuracy >= 0.79
    # With a 10-point floor the cheaper, less accurate threshold wins.
    loose = solve(inputs(slow_link, alpha=0.0, accuracy_floor=0.10)).assignment("d")
    assert loose.threshold == 0.6
    assert loose.energy_j < chosen.energy_j


def test_no_setting_meeting_the_floor_takes_the_most_accurate_and_says_so():
    table = ExitTable(
        num_blocks=4,
        points=(
            OperatingPoint(1, EXITS_OFF, {}, 0.70),
            OperatingPoint(1, 0.9, {1: 0.5}, 0.72),
            OperatingPoint(1, 0.6, {1: 0.7}, 0.65),
        ),
        full_accuracy=0.80,
    )
    problem = inputs(device(allowed_cuts=frozenset({1})), exits=table)
    chosen = solve(problem).assignment("d")
    assert (chosen.cut, chosen.threshold) == (1, 0.9)
    assert not chosen.accuracy_met
    assert "no allowed setting reaches the accuracy floor 79.0%" in chosen.reason


# --- what pushes the choice ----------------------------------------------------------------------


def test_a_slow_link_pushes_the_cut_deeper_and_more_requests_onto_the_device():
    fast = solve(inputs(device(uplink_bps=100e6, downlink_bps=100e6))).assignment("d")
    slow = solve(inputs(device(uplink_bps=0.5e6, downlink_bps=0.5e6))).assignment("d")
    assert fast.cut == 0
    assert slow.cut > fast.cut
    assert slow.local_fraction > fast.local_fraction
    assert "0.5 Mbit/s" in slow.reason or slow.cut == 4


def test_a_fast_link_and_a_slow_device_push_everything_to_the_edge():
    sluggish = device(forward_s=(0.05, 0.05, 0.05, 0.05), uplink_bps=100e6)
    chosen = solve(inputs(sluggish)).assignment("d")
    assert chosen.cut == 0
    assert chosen.local_fraction == 0.0
    assert "sending the raw input (12 kB) costs 0.96 ms at 100 Mbit/s" in chosen.reason


def test_a_fast_device_on_a_slow_link_answers_locally_and_its_degraded_answer_is_the_full_model():
    quick = device(forward_s=(0.0001,) * 4, uplink_bps=1e6)
    chosen = solve(inputs(quick)).assignment("d")
    assert chosen.cut == 4
    assert chosen.local_fraction == 1.0
    assert (chosen.degraded.position, chosen.degraded.accuracy) == (4, 0.80)


def test_a_low_battery_shifts_toward_less_device_energy():
    # At 10 Mbit/s the full model on the device answers in 5 ms for 21 mJ, the edge in 15 ms
    # for 14 mJ: a full battery takes the device, half a battery (energy weighs 2x) the edge.
    base = device(uplink_bps=10e6, downlink_bps=10e6)
    full = solve(inputs(replace(base, battery_fraction=1.0))).assignment("d")
    half = solve(inputs(replace(base, battery_fraction=0.5))).assignment("d")
    assert full.cut == 4
    assert half.cut == 0
    assert half.energy_j < full.energy_j
    assert "battery" not in full.reason
    assert "battery 50%: its energy weighs 2x" in half.reason
    # Below the floor (15%), even at alpha 1 (latency only): the least-energy setting, flagged.
    low = solve(inputs(replace(base, battery_fraction=0.1), alpha=1.0)).assignment("d")
    assert low.forced
    assert low.energy_j == half.energy_j
    assert "battery 10% below the 15% floor: least device energy" in low.reason
    mains = solve(inputs(base, alpha=1.0)).assignment("d")
    assert mains.energy_j > low.energy_j


def test_an_observed_exit_rate_below_the_tables_corrects_the_fractions():
    problem = inputs(device(uplink_bps=1e6))
    expected = solve(problem).assignment("d")
    assert expected.threshold == 0.9
    assert expected.cut >= 2
    observed = ObservedExits(expected.cut, 0.9, early_fraction=0.15, requests=450)
    corrected = solve(inputs(device(uplink_bps=1e6, observed=observed))).assignment("d")
    # Observed 0.15 against the table's 0.6: ratio 0.25, weighed by 450 / (450 + 50) = 0.9.
    k = 1 + 0.9 * (0.25 - 1)
    assert exit_ratio(TABLE, observed) == pytest.approx(k)
    assert corrected.setting == expected.setting  # cut 4: still the best, and slower now
    assert sum(corrected.exit_fraction.values()) == pytest.approx(0.6 * k)
    assert corrected.latency_s > expected.latency_s
    # A handful of requests barely moves the table; bounds clip a wild ratio.
    few = ObservedExits(expected.cut, 0.9, early_fraction=0.0, requests=5)
    assert exit_ratio(TABLE, few) == pytest.approx(1 + 5 / 55 * (0.25 - 1))
    many = ObservedExits(expected.cut, 0.9, early_fraction=1.0, requests=10**6)
    assert exit_ratio(TABLE, many, Correction(max_ratio=1.5)) == pytest.approx(1.5, rel=1e-3)
    # Exits off: nothing to compare with.
    off = ObservedExits(2, EXITS_OFF, early_fraction=0.0, requests=100)
    assert exit_ratio(TABLE, off) == 1.0


def test_allowed_cuts_and_memory_are_respected():
    chosen = solve(inputs(device(allowed_cuts=frozenset({2, 3}), uplink_bps=100e6))).assignment("d")
    assert chosen.cut in (2, 3)
    heavy = replace(MODEL, param_bytes=(1000, 1000, 1000, 10**9))
    quick = device(forward_s=(0.0001,) * 4, uplink_bps=1e6, memory_bytes=10**6)
    limited = solve(inputs(quick, model=heavy)).assignment("d")
    assert limited.cut < 4


def test_reasons_name_the_deciding_quantities():
    plan: InferencePlan = solve(inputs(device(uplink_bps=2e6, downlink_bps=2e6)))
    chosen = plan.assignment("d")
    reason = chosen.reason
    assert reason.startswith(f"cut {chosen.cut}")
    for fragment in ("answered on the device", "ms", "mJ per request", "accuracy", "floor 79.0%"):
        assert fragment in reason
    assert "would take" in reason  # the runner-up at another cut
    assert "the energy" in reason
    if chosen.cut < 4:
        assert f"the cut-{chosen.cut} activation" in reason
        assert "at 2 Mbit/s" in reason
    assert math.isfinite(chosen.objective)
