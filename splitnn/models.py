"""The models, each a chain of blocks; a cut can only fall between two blocks.

Block ``i`` of a model is child ``str(i)`` of the ``nn.Sequential`` that ``build_model`` returns,
so every state-dict key starts with its block index (``"5.1.weight"``); partitioning relies on it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from splitnn.errors import SplitError

MODEL_NAMES = ("vgg5", "small_cnn", "tiny")


@dataclass(frozen=True)
class ModelSpec:
    """What both sides of a split must agree on to build the same model."""

    name: str
    in_channels: int
    image_size: int  # images are square: image_size x image_size
    num_classes: int

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise SplitError(f"unknown model {self.name!r}; known models: {', '.join(MODEL_NAMES)}")
        for field in ("in_channels", "image_size", "num_classes"):
            value = getattr(self, field)
            # bool is an int subclass; a spec decoded from JSON must not smuggle one in.
            if type(value) is not int or value < 1:
                raise SplitError(f"ModelSpec.{field} must be a positive int, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict, the inverse of ``from_dict``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Rebuild a spec from ``to_dict`` output; extra or missing keys are a SplitError."""
        expected = {f.name for f in fields(cls)}
        if not isinstance(data, Mapping) or set(data) != expected:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise SplitError(f"model spec needs exactly the keys {sorted(expected)}, got {got}")
        return cls(**data)


def _conv(in_channels: int, out_channels: int, *, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _dense(in_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, out_features), nn.ReLU())


def _require_divisible(spec: ModelSpec, factor: int) -> int:
    """The side length after ``factor``-fold pooling; pooling must not drop pixels."""
    if spec.image_size % factor:
        raise SplitError(
            f"{spec.name} pools the image by {factor}, so image_size must be a multiple "
            f"of {factor}, got {spec.image_size}"
        )
    return spec.image_size // factor


def _vgg5(spec: ModelSpec) -> list[nn.Module]:
    side = _require_divisible(spec, 4)
    return [
        _conv(spec.in_channels, 32, batch_norm=True),
        nn.MaxPool2d(2),
        _conv(32, 64, batch_norm=True),
        nn.MaxPool2d(2),
        _conv(64, 64, batch_norm=True),
        _dense(64 * side * side, 128),
        nn.Linear(128, spec.num_classes),
    ]


def _small_cnn(spec: ModelSpec) -> list[nn.Module]:
    side = _require_divisible(spec, 2)
    return [
        _conv(spec.in_channels, 16, batch_norm=False),
        _conv(16, 32, batch_norm=False),
        nn.MaxPool2d(2),
        _dense(32 * side * side, 64),
        nn.Linear(64, spec.num_classes),
    ]


def _tiny(spec: ModelSpec) -> list[nn.Module]:
    """A multilayer perceptron for load tests: many devices, little compute, small frames."""
    return [
        _dense(spec.in_channels * spec.image_size * spec.image_size, 32),
        nn.Sequential(nn.Linear(32, 32), nn.ReLU()),
        nn.Linear(32, spec.num_classes),
    ]


_BUILDERS: Mapping[str, Callable[[ModelSpec], list[nn.Module]]] = {
    "vgg5": _vgg5,
    "small_cnn": _small_cnn,
    "tiny": _tiny,
}


def build_blocks(spec: ModelSpec) -> list[nn.Module]:
    """Fresh blocks with torch's default init (seed torch first for reproducible weights)."""
    return _BUILDERS[spec.name](spec)


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
        x = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size)
        shapes = []
        for block in model:
            x = block(x)
            shapes.append(tuple(x.shape[1:]))
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
