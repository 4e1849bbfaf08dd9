"""The one list of split policies: CLI choices, settings and scenario validation, benchmarks
and plan messages all read it. The built-ins register themselves with :func:`register_policy`;
a user's policy does the same from their own code, or is named as ``package.module:Class``
(imported on first use), or is published by an installed package under the ``ares.policies``
entry-point group. Nothing of ours needs editing.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TypeVar

from planner.errors import PlanningError
from planner.policies.base import SplitPolicy

P = TypeVar("P", bound=type[SplitPolicy])
ENTRY_POINT_GROUP = "ares.policies"


class PolicyRegistry:
    """Policy classes by name."""

    def __init__(self) -> None:
        self._classes: dict[str, type[SplitPolicy]] = {}
        self._entry_points_loaded = False

    def register(self, cls: P) -> P:
        """Add ``cls`` under ``cls.name`` (usable as a class decorator)."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name or ":" in name:
            raise PlanningError("policy", f"{cls!r} needs a class attribute name (no ':')")
        if not isinstance(getattr(cls, "summary", None), str):
            raise PlanningError("policy", f"policy {name!r} needs a class attribute summary")
        if not callable(getattr(cls, "decide", None)) or not callable(getattr(cls, "resume", None)):
            raise PlanningError("policy", f"policy {name!r} needs decide() and resume()")
        known = self._classes.get(name)
        if known is not None and known is not cls:
            raise PlanningError("policy", f"two policies are called {name!r}: {known!r}, {cls!r}")
        self._classes[name] = cls
        return cls

    def names(self) -> tuple[str, ...]:
        """Registered names, built-ins first, in registration order."""
        self._load_entry_points()
        return tuple(self._classes)

    def summaries(self) -> dict[str, str]:
        return {name: cls.summary for name, cls in self._classes.items() if name in self.names()}

    def resolve(self, name: str) -> type[SplitPolicy]:
        """The class called ``name``, or importable as ``package.module:Class``."""
        self._load_entry_points()
        if name in self._classes:
            return self._classes[name]
        if ":" in name:
            return self.register(_import(name))
        raise PlanningError(
            "policy", f"unknown policy {name!r}; choose from {', '.join(self.names())} "
            "or name your own as package.module:Class"
        )  # fmt: skip

    def create(self, name: str) -> SplitPolicy:
        """A fresh instance (one per run: a policy may keep state between rounds)."""
        return self.resolve(name)()

    def check(self, name: str) -> str:
        """``name`` if it names a policy (for settings validators), else PlanningError."""
        self.resolve(name)
        return name

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            self.register(entry.load())


def _import(reference: str) -> type[SplitPolicy]:
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        message = f"cannot import {module_name!r} for {reference!r}: {exc}"
        raise PlanningError("policy", message) from None
    cls = getattr(module, attribute, None)
    if not isinstance(cls, type):
        raise PlanningError("policy", f"{reference!r}: no class {attribute!r} in {module_name}")
    return cls


POLICIES = PolicyRegistry()
register_policy = POLICIES.register
