"""Serving policies: the registry, each baseline's choice, and the adaptive policy's hysteresis."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import ClassVar

import pytest

from planner import PlanningError
from planner.inference import (
    EXITS_OFF,
    SERVING_POLICIES,
    InferencePlan,
    ServingInputs,
    ServingPolicy,
    ServingPolicyRegistry,
    Setting,
    plan_for_settings,
    price_device,
    solve,
    stabilise,
)
from planner.inference.paper import serving_testbed
from planner.inference.policies.adaptive import AdaptiveServing
from tests.planner.test_inference_solver import device, inputs


class CutTwoEverywhere:
    """A user's serving policy, defined outside our packages."""

    name: ClassVar[str] = "cut-two"
    summary: ClassVar[str] = "cut 2, exits at 0.9, for every device"

    def decide(self, inputs: ServingInputs) -> InferencePlan:
        return plan_for_settings(inputs, (2, 0.9), reason="the user's policy")

    def resume(self, previous: Mapping[str, Setting]) -> None:
        pass


def with_uplink(problem: ServingInputs, mbps: float, *ids: str) -> ServingInputs:
    devices = tuple(
        replace(d, uplink_bps=mbps * 1e6) if not ids or d.device_id in ids else d
        for d in problem.devices
    )
    return replace(problem, devices=devices)


def test_the_builtins_are_registered_in_order_and_implement_the_protocol():
    assert SERVING_POLICIES.names()[:5] == ("ares", "edge", "device", "sl-best", "exits-static")
    for name in SERVING_POLICIES.names():
        assert isinstance(SERVING_POLICIES.create(name), ServingPolicy)
        assert SERVING_POLICIES.summaries()[name]


def test_a_users_policy_registers_or_is_named_by_its_import_path():
    registry = ServingPolicyRegistry()
    registry.register(CutTwoEverywhere)
    plan = registry.create("cut-two").decide(inputs())
    assert plan.settings == {"d": (2, 0.9)}
    assert plan.assignment("d").reason.startswith("the user's policy: cut 2, exits at 0.9")
    named = ServingPolicyRegistry().resolve(f"{__name__}:CutTwoEverywhere")
    assert named is CutTwoEverywhere
    with pytest.raises(PlanningError, match="unknown serving policy 'nope'"):
        registry.resolve("nope")


def test_edge_and_device_baselines():
    problem = serving_testbed()
    edge = SERVING_POLICIES.create("edge").decide(problem)
    assert set(edge.settings.values()) == {(0, EXITS_OFF)}
    for a in edge.assignments:
        assert a.local_fraction == 0.0
        assert a.accuracy == 0.80
        assert "sending the raw input (12.3 kB)" in a.reason
        assert a.degraded.position is None  # nothing on the device to answer with
    device_plan = SERVING_POLICIES.create("device").decide(problem)
    assert set(device_plan.settings.values()) == {(7, EXITS_OFF)}
    for a in device_plan.assignments:
        assert a.local_fraction == 1.0
        assert (a.degraded.position, a.degraded.accuracy) == (7, 0.80)


def test_sl_best_is_the_best_single_cut_without_exits_chosen_once():
    problem = serving_testbed()
    policy = SERVING_POLICIES.create("sl-best")
    first = policy.decide(problem)
    (setting,) = set(first.settings.values())
    assert setting[1] == EXITS_OFF
    # It is the cut whose summed objective is least.
    totals = {
        cut: plan_for_settings(problem, (cut, EXITS_OFF), reason="").objective for cut in range(8)
    }
    assert setting[0] == min(totals, key=lambda c: totals[c])
    assert "chosen once by the cost model" in first.assignments[0].reason
    # The link drops: a fresh choice would differ, but sl-best is never re-planned.
    dropped = with_uplink(problem, 2.0)
    assert SERVING_POLICIES.create("sl-best").decide(dropped).settings != first.settings
    assert policy.decide(dropped).settings == first.settings


def test_exits_static_fixes_one_cut_and_threshold_with_exits_on():
    problem = serving_testbed()
    policy = SERVING_POLICIES.create("exits-static")
    plan = policy.decide(problem)
    ((cut, threshold),) = set(plan.settings.values())
    assert threshold <= 1.0
    assert cut >= 2  # the first exit sits after block 2
    for a in plan.assignments:
        assert a.accuracy >= 0.79
    assert policy.decide(with_uplink(problem, 2.0)).settings == plan.settings
    resumed = SERVING_POLICIES.create("exits-static")
    resumed.resume({"pi3b": (4, 0.95)})
    assert set(resumed.decide(problem).settings.values()) == {(4, 0.95)}


def test_ares_keeps_its_setting_unless_the_new_one_is_better_by_the_margin():
    problem = inputs(device(uplink_bps=3e6, downlink_bps=3e6))
    best = solve(problem).assignment("d")
    options = price_device(problem, problem.devices[0])
    others = [k for k in range(len(options.cuts)) if options.cuts[k] != best.cut]
    k = min(others, key=lambda i: options.objective[i] if options.accurate[i] else float("inf"))
    previous = (int(options.cuts[k]), float(options.thresholds[k]))
    gain = 1.0 - best.objective / float(options.objective[k])
    assert 0.0 < gain < 0.9
    with_previous = replace(problem, previous={"d": previous})
    kept = stabilise(with_previous, solve(with_previous), margin=gain + 0.01).assignment("d")
    assert kept.setting == previous
    assert kept.reason.startswith(f"keeps cut {previous[0]}")
    assert f"is not {gain + 0.01:.0%} lower" in kept.reason
    moved = stabilise(with_previous, solve(with_previous), margin=gain - 0.01).assignment("d")
    assert moved.setting == best.setting
    assert moved.reason.startswith(f"moves from cut {previous[0]}")


def test_ares_holds_through_noise_and_follows_a_link_drop_at_the_next_re_plan():
    problem = serving_testbed()
    policy = AdaptiveServing()
    first = policy.decide(problem)
    # 3% jitter in every link: nothing moves.
    for factor in (0.97, 1.03):
        noisy = replace(
            problem,
            devices=tuple(replace(d, uplink_bps=d.uplink_bps * factor) for d in problem.devices),
        )
        assert policy.decide(noisy).settings == first.settings
    # The Pi's link drops to 2 Mbit/s: the raw input now costs 49 ms; the Pi moves at once.
    dropped = policy.decide(with_uplink(problem, 2.0, "pi3b"))
    pi = dropped.assignment("pi3b")
    assert first.assignment("pi3b").cut == 0
    assert pi.cut > 0
    assert pi.reason.startswith("moves from cut 0 (all on the edge)")
    assert pi.latency_s < 0.03


def test_ares_uses_the_callers_settings_in_force_and_resumes():
    problem = serving_testbed()
    policy = AdaptiveServing(margin=0.9)  # a huge margin: nothing moves once in force
    policy.resume({"pi3b": (7, EXITS_OFF)})
    assert policy.decide(problem).assignment("pi3b").setting == (7, EXITS_OFF)
    given = replace(problem, previous={"pi3b": (6, EXITS_OFF)})
    assert policy.decide(given).assignment("pi3b").setting == (6, EXITS_OFF)


def test_the_battery_rule_and_lost_settings_outrank_hysteresis():
    base = device(uplink_bps=10e6, downlink_bps=10e6)
    low = inputs(replace(base, battery_fraction=0.1), previous={"d": (4, EXITS_OFF)})
    chosen = stabilise(low, solve(low), margin=0.9).assignment("d")
    assert chosen.forced
    assert chosen.reason.startswith("leaves cut 4 (all on the device), exits off")
    gone = inputs(replace(base, allowed_cuts=frozenset({0, 1})), previous={"d": (4, 0.9)})
    left = stabilise(gone, solve(gone), margin=0.9).assignment("d")
    assert left.cut in (0, 1)
    assert "no longer a contender" in left.reason


def test_baselines_refuse_a_setting_a_device_may_not_take():
    problem = inputs(device(allowed_cuts=frozenset({2, 3})))
    with pytest.raises(PlanningError, match="cut 0 is not allowed") as caught:
        SERVING_POLICIES.create("edge").decide(problem)
    assert caught.value.field == "d"
