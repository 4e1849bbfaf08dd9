"""The policy registry: one list of policies for every entry point, open to the user's own."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import ClassVar

import pytest
from pydantic import ValidationError

from edge_service import EdgeSettings
from edge_service.planning import SplitPlanner
from planner import Plan, PlanningError, plan_for_cuts
from planner.policies import POLICIES, PolicyInputs, PolicyRegistry, SplitPolicy, register_policy
from testbed.scenario import Scenario
from tests.edge_service.test_planning import DEFAULTS, SERVER, readings


class EverythingOnTheEdge:
    """A user's policy, defined outside our packages: cut 1 for every device."""

    name: ClassVar[str] = "edge-heavy"
    summary: ClassVar[str] = "cut 1 everywhere"

    def __init__(self) -> None:
        self.resumed: Mapping[str, int] | None = None

    def decide(self, inputs: PolicyInputs) -> Plan:
        return plan_for_cuts(inputs.table, inputs.alpha, 1, reason="the user's policy")

    def resume(self, previous: Mapping[str, int]) -> None:
        self.resumed = previous


def test_the_builtins_are_registered_in_order_and_implement_the_protocol():
    assert POLICIES.names()[:4] == ("ares", "static", "fl", "sl")
    for name in POLICIES.names():
        assert isinstance(POLICIES.create(name), SplitPolicy)
        assert POLICIES.summaries()[name]


def test_every_entry_point_takes_its_choices_from_the_registry():
    from ares.cli import _training_flags
    from experiments.options import POLICIES as BENCH_POLICIES

    assert set(BENCH_POLICIES) == ({*POLICIES.names(), "sl-best", "sl-first"} - {"sl"})
    parser = argparse.ArgumentParser()
    _training_flags(parser)
    help_text = " ".join(parser.format_help().split())
    for name in ("ares", "static", "fl", "sl"):
        assert f"{name}: {POLICIES.summaries()[name]}" in help_text
        EdgeSettings(policy=name)
        Scenario(name="s", policy=name, devices=[{"id": "d", "profile": "host"}])


def test_an_unknown_policy_is_refused_everywhere_with_the_choices():
    with pytest.raises(PlanningError, match="choose from ares, static, fl, sl"):
        POLICIES.create("nope")
    with pytest.raises(ValidationError, match="unknown policy 'nope'"):
        EdgeSettings(policy="nope")
    with pytest.raises(ValidationError, match="unknown policy 'nope'"):
        Scenario(name="s", policy="nope", devices=[{"id": "d", "profile": "host"}])


def test_a_users_policy_named_by_its_import_path_plans_rounds():
    reference = f"{__name__}:EverythingOnTheEdge"
    settings = EdgeSettings(policy=reference)
    planner = SplitPlanner(
        policy=settings.policy, alpha=0.5, model_name="small_cnn", server=SERVER,
        defaults=DEFAULTS, fixed_split=2, fixed_splits={},
    )  # fmt: skip
    planner.resume({"a": 3})
    plan = planner.plan({"a": readings(), "b": readings()})
    assert plan.splits == {"a": 1, "b": 1}
    assert plan.devices["a"].reason == "the user's policy"
    assert "edge-heavy" in POLICIES.names()  # registered on first use, by its own name


def test_registration_checks_the_class():
    registry = PolicyRegistry()
    assert registry.register(EverythingOnTheEdge) is EverythingOnTheEdge
    assert registry.register(EverythingOnTheEdge) is EverythingOnTheEdge  # idempotent

    class Impostor(EverythingOnTheEdge):
        pass

    with pytest.raises(PlanningError, match="two policies are called 'edge-heavy'"):
        registry.register(Impostor)

    class Nameless:
        summary = "x"

        def decide(self, inputs):
            raise AssertionError

        def resume(self, previous):
            pass

    with pytest.raises(PlanningError, match="needs a class attribute name"):
        registry.register(Nameless)  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("reference", "problem"),
    [("no_such_module_xyz:Policy", "cannot import"), (f"{__name__}:Missing", "no class")],
)
def test_a_bad_import_path_is_one_clear_error(reference, problem):
    with pytest.raises(PlanningError, match=problem):
        POLICIES.create(reference)


def test_register_policy_is_the_decorator_of_the_default_registry():
    @register_policy
    class Deepest:
        name: ClassVar[str] = "deepest-test"
        summary: ClassVar[str] = "every block on the device (a test's copy of fl)"

        def decide(self, inputs: PolicyInputs) -> Plan:
            return plan_for_cuts(inputs.table, inputs.alpha, inputs.blocks)

        def resume(self, previous: Mapping[str, int]) -> None:
            pass

    assert POLICIES.resolve("deepest-test") is Deepest
