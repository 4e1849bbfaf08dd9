"""Split policies: one class per policy, one file each, and the registry they join.

    from planner.policies import POLICIES
    policy = POLICIES.create("ares")
    plan = policy.decide(PolicyInputs(table=table, alpha=0.5, previous=last_cuts))

To add a policy, write a class with ``name``, ``summary``, ``decide`` and ``resume`` (see
:class:`SplitPolicy`) and decorate it with :func:`register_policy`, or pass
``--policy package.module:Class``.
"""

# The built-ins register themselves on import, in this order (the CLI lists them so).
from planner.policies import adaptive, static, federated, split_learning  # noqa: F401  # isort: skip
from planner.policies.base import PolicyInputs, SplitPolicy
from planner.policies.registry import POLICIES, PolicyRegistry, register_policy

__all__ = ["POLICIES", "PolicyInputs", "PolicyRegistry", "SplitPolicy", "register_policy"]
