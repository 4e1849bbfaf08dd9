"""Serving plans: per device a cut and an early-exit threshold, from live readings and the
model's exit table. Pure code like the rest of :mod:`planner`: no I/O, no clock, no torch, and
nothing of the serving packages (the runtime converts its records into these types).

    inputs = ServingInputs(devices, edge, model, exits, alpha=0.5)
    plan = SERVING_POLICIES.create("ares").decide(inputs)
    plan.assignment("pi3b").cut, .threshold, .latency_s, .energy_j, .reason, .degraded

Cost model: :mod:`planner.inference.cost`; objective and rule: :mod:`planner.inference.options`;
hysteresis: :mod:`planner.inference.stability`; exit table and online correction:
:mod:`planner.inference.points`; what the paper's testbed predicts:
:mod:`planner.inference.paper`.
"""

from planner.inference.cost import RequestCost, option_costs, request_cost
from planner.inference.options import DeviceOptions, price_device
from planner.inference.plan import Degraded, InferencePlan, ServingAssignment, Setting
from planner.inference.points import (
    EXITS_OFF,
    Correction,
    ExitTable,
    ObservedExits,
    OperatingPoint,
    OperatingPointLike,
    exits_on,
)
from planner.inference.policies import (
    SERVING_POLICIES,
    ServingPolicy,
    ServingPolicyRegistry,
    register_serving_policy,
)
from planner.inference.problem import DEFAULT_ACCURACY_FLOOR, ServingInputs
from planner.inference.profiles import (
    DEFAULT_OVERHEAD_S,
    ServingDevice,
    ServingEdge,
    ServingModel,
)
from planner.inference.solver import brute_force, plan_for_settings, solve
from planner.inference.stability import DEFAULT_MARGIN, stabilise

__all__ = [
    "DEFAULT_ACCURACY_FLOOR",
    "DEFAULT_MARGIN",
    "DEFAULT_OVERHEAD_S",
    "EXITS_OFF",
    "SERVING_POLICIES",
    "Correction",
    "Degraded",
    "DeviceOptions",
    "ExitTable",
    "InferencePlan",
    "ObservedExits",
    "OperatingPoint",
    "OperatingPointLike",
    "RequestCost",
    "ServingAssignment",
    "ServingDevice",
    "ServingEdge",
    "ServingInputs",
    "ServingModel",
    "ServingPolicy",
    "ServingPolicyRegistry",
    "Setting",
    "brute_force",
    "exits_on",
    "option_costs",
    "plan_for_settings",
    "price_device",
    "register_serving_policy",
    "request_cost",
    "solve",
    "stabilise",
]
