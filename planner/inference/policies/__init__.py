"""Serving policies: one class per policy, one file each, and the registry they join.

    from planner.inference.policies import SERVING_POLICIES
    policy = SERVING_POLICIES.create("ares")
    plan = policy.decide(inputs)  # a ServingInputs, re-built from every set of readings

Built-ins: ``ares`` (adaptive, re-planned with hysteresis), ``edge`` (cut 0, raw input sent),
``device`` (cut L, the full model on the device), ``sl-best`` (the best fixed cut without
exits, chosen once) and ``exits-static`` (one cut and threshold, chosen once). To add one, write
a class with ``name``, ``summary``, ``decide`` and ``resume`` (see :class:`ServingPolicy`) and
decorate it with :func:`register_serving_policy`, or name it ``package.module:Class``.
"""

# The built-ins register themselves on import, in this order (listings show them so).
from planner.inference.policies import adaptive, edge, device, sl_best, exits_static  # noqa: F401  # isort: skip
from planner.inference.policies.base import ServingPolicy
from planner.inference.policies.registry import (
    SERVING_POLICIES,
    ServingPolicyRegistry,
    register_serving_policy,
)
from planner.inference.policies.shared import SharedChoice, best_shared

__all__ = [
    "SERVING_POLICIES",
    "ServingPolicy",
    "ServingPolicyRegistry",
    "SharedChoice",
    "best_shared",
    "register_serving_policy",
]
