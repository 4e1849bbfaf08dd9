"""The one list of serving policies, apart from the training policies' (a serving policy decides
cut and threshold per request stream, a split policy cut per round): the CLI, settings, the
inference bench and the plan message read it. The built-ins register themselves with
:func:`register_serving_policy`; a user's policy does the same from their own code, or is named
``package.module:Class``, or is published under the ``ares.serving_policies`` entry-point group.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TypeVar

from planner.errors import PlanningError
from planner.inference.policies.base import ServingPolicy

P = TypeVar("P", bound=type[ServingPolicy])
ENTRY_POINT_GROUP = "ares.serving_policies"


class ServingPolicyRegistry:
    """Serving policy classes by name."""

    def __init__(self) -> None:
        self._classes: dict[str, type[ServingPolicy]] = {}
        self._loaded = False

    def register(self, cls: P) -> P:
        """Add ``cls`` under ``cls.name`` (usable as a class decorator)."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name or ":" in name:
            raise PlanningError("policy", f"{cls!r} needs a class attribute name (no ':')")
        if not isinstance(getattr(cls, "summary", None), str):
            raise PlanningError("policy", f"serving policy {name!r} needs a summary")
        if not all(callable(getattr(cls, m, None)) for m in ("decide", "resume")):
            raise PlanningError("policy", f"serving policy {name!r} needs decide() and resume()")
        known = self._classes.setdefault(name, cls)
        if known is not cls:
            raise PlanningError("policy", f"two serving policies are called {name!r}")
        return cls

    def names(self) -> tuple[str, ...]:
        """Registered names, built-ins first, in registration order."""
        self._load_entry_points()
        return tuple(self._classes)

    def summaries(self) -> dict[str, str]:
        return {name: self._classes[name].summary for name in self.names()}

    def resolve(self, name: str) -> type[ServingPolicy]:
        """The class called ``name``, or importable as ``package.module:Class``."""
        self._load_entry_points()
        if name in self._classes:
            return self._classes[name]
        if ":" not in name:
            choices = ", ".join(self.names())
            raise PlanningError("policy", f"unknown serving policy {name!r}; choose from {choices}")
        module_name, _, attribute = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise PlanningError("policy", f"cannot import {module_name!r}: {exc}") from None
        cls = getattr(module, attribute, None)
        if not isinstance(cls, type):
            raise PlanningError("policy", f"{name!r}: no class {attribute!r} in {module_name}")
        return self.register(cls)

    def create(self, name: str) -> ServingPolicy:
        """A fresh instance (one per run: a policy may keep state)."""
        return self.resolve(name)()

    def check(self, name: str) -> str:
        """``name`` if it names a serving policy (for settings validators)."""
        self.resolve(name)
        return name

    def _load_entry_points(self) -> None:
        if not self._loaded:
            self._loaded = True
            for entry in entry_points(group=ENTRY_POINT_GROUP):
                self.register(entry.load())


SERVING_POLICIES = ServingPolicyRegistry()
register_serving_policy = SERVING_POLICIES.register
