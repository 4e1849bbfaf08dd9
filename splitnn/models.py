"""Model specs, and what follows from one: the blocks, their output shapes, the fingerprint.

Block ``i`` of a model is child ``str(i)`` of the ``nn.Sequential`` that ``build_model`` returns,
so every state-dict key starts with its block index (``"5.1.weight"``); partitioning relies on it.
Which models exist is the registry's business (:mod:`splitnn.model_registry`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splitnn.errors import SplitError
from splitnn.model_registry import model_entry


@dataclass(frozen=True)
class ModelSpec:
    """What both sides of a split must agree on to build the same model."""

    name: str  # a registered model, or "package.module:callable"
    input_shape: tuple[int, ...]  # one sample: (C, H, W) for images, (C, T) for series
    num_classes: int

    def __post_init__(self) -> None:
        shape = self.input_shape
        # bool is an int subclass; a spec decoded from JSON must not smuggle one in.
        if (
            not isinstance(shape, tuple)
            or not shape
            or any(type(n) is not int or n < 1 for n in shape)
        ):
            raise SplitError(f"ModelSpec.input_shape must be positive ints, got {shape!r}")
        if type(self.num_classes) is not int or self.num_classes < 2:
            raise SplitError(f"ModelSpec.num_classes must be an int >= 2, got {self.num_classes!r}")
        model_entry(self.name)  # unknown names fail here, with the known ones listed

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]

    @classmethod
    def of(cls, info: Any) -> ModelSpec:
        """The spec a wire ``ModelInfo`` (or anything with its three fields) describes."""
        return cls(info.name, tuple(info.input_shape), info.num_classes)

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict, the inverse of ``from_dict``."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Rebuild a spec from ``to_dict`` output (or the older square-image form with
        ``in_channels`` and ``image_size``); extra or missing keys are a SplitError."""
        if not isinstance(data, Mapping):
            raise SplitError(f"model spec must be a mapping, got {type(data).__name__}")
        if set(data) == {"name", "in_channels", "image_size", "num_classes"}:
            side = data["image_size"]
            data = {**data, "input_shape": [data["in_channels"], side, side]}
            data = {k: v for k, v in data.items() if k not in ("in_channels", "image_size")}
        expected = {"name", "input_shape", "num_classes"}
        if set(data) != expected or not isinstance(data["input_shape"], list | tuple):
            raise SplitError(
                f"model spec needs exactly the keys {sorted(expected)}, got {sorted(data)}"
            )
        return cls(data["name"], tuple(data["input_shape"]), data["num_classes"])


def build_blocks(spec: ModelSpec) -> list[nn.Module]:
    """Fresh blocks with torch's default init (seed torch first for reproducible weights)."""
    return model_entry(spec.name).blocks(spec)


def build_model(spec: ModelSpec) -> nn.Sequential:
    """The whole model: block ``i`` is child ``str(i)``."""
    return nn.Sequential(*build_blocks(spec))


@functools.lru_cache(maxsize=64)
def _probe(spec: ModelSpec) -> tuple[tuple[tuple[int, ...], ...], tuple[str, ...], str]:
    """Per-block output shapes, the state-dict keys and the architecture fingerprint, from one
    throwaway model."""
    # Building draws from torch's global RNG; fork it so probing never shifts the caller's seed.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        model = build_model(spec).eval()
        x = torch.zeros(1, *spec.input_shape)
        shapes = []
        for index, block in enumerate(model):
            try:
                x = block(x)
            except (RuntimeError, ValueError) as exc:
                raise SplitError(
                    f"{spec.name}: block {index} ({type(block).__name__}) fails on the output of "
                    f"the block before it, shape {tuple(x.shape[1:])}: {exc}"
                ) from None
            if not isinstance(x, torch.Tensor):
                raise SplitError(f"{spec.name}: block {index} must return one tensor")
            shapes.append(tuple(x.shape[1:]))
        if shapes[-1] != (spec.num_classes,):
            raise SplitError(
                f"{spec.name}: the last block must give {spec.num_classes} class scores per "
                f"sample, got shape {shapes[-1]}"
            )
        return tuple(shapes), tuple(model.state_dict()), fingerprint_module(model)


def fingerprint_module(model: nn.Module) -> str:
    """A hash of the architecture: every module's type, every parameter's and buffer's name,
    shape and dtype. Equal fingerprints mean weights and profiles carry over; the values of
    the weights do not count."""
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        digest.update(f"m {name} {type(module).__module__}.{type(module).__qualname__}\n".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"t {name} {tuple(tensor.shape)} {tensor.dtype}\n".encode())
    return digest.hexdigest()[:16]


def architecture_fingerprint(spec: ModelSpec) -> str:
    """The fingerprint (``fingerprint_module``) of the model ``spec`` builds."""
    return _probe(spec)[2]


def num_blocks(spec: ModelSpec) -> int:
    """L, the number of blocks; valid cuts are 1..L."""
    return len(_probe(spec)[0])


def cut_shapes(spec: ModelSpec) -> list[tuple[int, ...]]:
    """Per-sample output shape of each block; the activation at cut ``s`` has ``[s - 1]``."""
    return list(_probe(spec)[0])


def state_keys(spec: ModelSpec) -> tuple[str, ...]:
    """The full model's state-dict keys, in order."""
    return _probe(spec)[1]
