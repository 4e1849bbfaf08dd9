"""Models by name: the built-ins, a user's registered ones, and ``package.module:callable``.

A model is a chain of blocks; a cut falls between two of them. The built-ins
(:mod:`splitnn.architectures`) register themselves here the way a user's code does::

    from splitnn.model_registry import register_model
    register_model("my_net", build_my_net, input_rank=3, description="...")

where ``build_my_net(spec)`` returns the blocks (a list of modules, or an ``nn.Sequential``
whose children are the blocks). With no registration at all, ``--model mypkg.nets:make_net``
imports ``mypkg.nets`` and calls ``make_net`` with the keyword arguments it declares among
``input_shape``, ``in_channels``, ``num_classes`` and ``spec``; it returns an ``nn.Sequential``
whose children are the blocks. The same code must be importable on the edge and on every device:
registration compares the architectures' fingerprints (:func:`splitnn.models.fingerprint_module`).
"""

from __future__ import annotations

import importlib
import inspect
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from splitnn.errors import SplitError
from splitnn.imports import IMPORT_PATH, import_callable

if TYPE_CHECKING:
    from splitnn.models import ModelSpec

BlockBuilder = Callable[["ModelSpec"], "Sequence[nn.Module] | nn.Sequential"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
# What a ``module:callable`` model may ask for, by parameter name.
_CALLABLE_ARGUMENTS = ("input_shape", "in_channels", "num_classes", "spec")


@dataclass(frozen=True)
class ModelEntry:
    """A model the registry can build: ``build(spec)`` gives its blocks."""

    name: str
    build: BlockBuilder
    input_rank: int | None  # len(input_shape) the model takes (3: C x H x W); None: any
    description: str = ""

    def blocks(self, spec: ModelSpec) -> list[nn.Module]:
        """Fresh blocks for ``spec`` (torch's default init: seed torch first to reproduce)."""
        if self.input_rank is not None and len(spec.input_shape) != self.input_rank:
            raise SplitError(
                f"{self.name} takes inputs of rank {self.input_rank} (per sample), got shape "
                f"{spec.input_shape}"
            )
        built = self.build(spec)
        blocks = list(built.children()) if isinstance(built, nn.Module) else list(built)
        if not isinstance(built, nn.Sequential | list | tuple) or not blocks:
            raise SplitError(
                f"model {self.name} must give an nn.Sequential (or a list) of blocks, got "
                f"{type(built).__name__}{' with no children' if not blocks else ''}"
            )
        bad = [type(b).__name__ for b in blocks if not isinstance(b, nn.Module)]
        if bad:
            raise SplitError(f"model {self.name}: blocks must be nn.Modules, got {bad[:3]}")
        return blocks


_REGISTRY: dict[str, ModelEntry] = {}
_builtins_loaded = False
_builtins_lock = threading.Lock()


def register_model(
    name: str, build: BlockBuilder, *, input_rank: int | None = 3, description: str = ""
) -> None:
    """Make ``name`` a model choice everywhere (CLI, settings, scenarios, ``ares plan``).

    Registering the same builder under the same name again (a module imported twice) is a
    no-op; another builder under a taken name is a SplitError.
    """
    if not _NAME.fullmatch(name):
        raise SplitError(f"model name {name!r} must be a word (letters, digits, _ . -)")
    if input_rank is not None and input_rank < 1:
        raise SplitError(f"input_rank must be >= 1 or None, got {input_rank}")
    known = _REGISTRY.get(name)
    if known is not None and known.build is not build:
        raise SplitError(f"model {name!r} is already registered (by {known.build.__module__})")
    _REGISTRY[name] = ModelEntry(name, build, input_rank, description)


def model_names() -> tuple[str, ...]:
    """The registered models (built-ins first, then a user's, in registration order)."""
    _load_builtins()
    return tuple(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registered model ``name``, or the one ``package.module:callable`` names."""
    _load_builtins()
    entry = _REGISTRY.get(name)
    if entry is not None:
        return entry
    if IMPORT_PATH.fullmatch(name):
        return _imported(name)
    raise SplitError(
        f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}, or "
        "'package.module:callable' for your own (it must be importable here)"
    )


def is_model_name(name: str) -> bool:
    """Whether ``name`` is a registered model or has the ``package.module:callable`` form
    (without importing anything: the form is checked where the model is built)."""
    _load_builtins()
    return name in _REGISTRY or IMPORT_PATH.fullmatch(name) is not None


def _imported(path: str) -> ModelEntry:
    try:
        factory = import_callable(path, "model")
    except ValueError as exc:
        raise SplitError(str(exc)) from None
    return ModelEntry(path, _calling(path, factory), input_rank=None)


def _calling(path: str, factory: Callable[..., Any]) -> BlockBuilder:
    """A builder that calls ``factory`` with the arguments it declares."""
    try:
        declared = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # some builtins have no signature: call with none
        declared = {}  # type: ignore[assignment]

    def build(spec: ModelSpec) -> nn.Sequential:
        offered = {
            "input_shape": spec.input_shape,
            "in_channels": spec.in_channels,
            "num_classes": spec.num_classes,
            "spec": spec,
        }
        kwargs = {k: offered[k] for k in _CALLABLE_ARGUMENTS if k in declared}
        try:
            built = factory(**kwargs)
        except Exception as exc:  # the user's code: any failure is one clear line
            raise SplitError(f"model {path} failed to build: {type(exc).__name__}: {exc}") from None
        if not isinstance(built, nn.Sequential):
            raise SplitError(
                f"model {path} must return an nn.Sequential whose children are the blocks, "
                f"got {type(built).__name__}"
            )
        return built

    return build


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    # Devices check the edge's model in worker threads: a second thread must wait for the
    # first one's import, not find the flag set and the registry still empty.
    with _builtins_lock:
        if not _builtins_loaded:
            importlib.import_module("splitnn.architectures")
            _builtins_loaded = True
