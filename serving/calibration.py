"""Calibration: train the exit heads on a trained model and measure what each setting delivers.

**Why after training, not during it.** BranchyNet (Teerapittayanon et al., ICPR 2016) trains
side branches jointly with the backbone, on a weighted sum of their losses. Shallow-Deep
Networks (Kaya et al., ICML 2019) show that internal classifiers trained afterwards on a frozen
backbone already reach most of that accuracy, and that joint training can cost the final
classifier some. Here calibration after training wins on every count that matters to this
system: the training plan, its cost model (the device-side blocks' forward and backward times)
and the devices' protocol stay as they are; the backbone's accuracy is untouched, since its
weights are not; and heads on frozen features are linear classifiers on fixed inputs, which a
few hundred samples train in seconds. The edge's held-out set is enough, so no training data
ever leaves a device for it.

**The recipe** (:func:`calibrate`). The edge's held-out set is split, stratified by class, into
a calibration half and a validation half (``holdout_fraction``). The backbone runs once over
each half in eval mode; each head's weight-free pooling (:mod:`splitnn.exits`) is applied then,
so only its linear layer is trained: Adam, cross-entropy, ``epochs`` passes in mini-batches of
``BATCH``. On the validation half it measures the full model, each exit, and the
**operating points**: for every cut ``c`` in 1..L and threshold ``t`` in ``THRESHOLDS``, a
sample leaves at the first exit at a position ``<= c`` (those run on the device) whose top
softmax probability is at least ``t``, and is otherwise answered by the full model (the edge
completes the pass). ``EXITS_OFF`` (1.01) is never met: no sample exits. A cut below every exit
(or cut 0, the raw input sent) behaves like any cut with the exits off. With the edge gone, the
device answers everything from its deepest exit: ``deepest_exit_accuracy``.

The accuracies are measured on the validation half only, so they are the same population for
the full model and the exits (the edge's run report evaluates on the whole held-out set).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn

from schemas.errors import AresError
from splitnn.data import ArrayDataset
from splitnn.exits import (
    build_exits,
    check_positions,
    confidence,
    default_exit_positions,
    split_head,
)
from splitnn.models import ModelSpec, build_model, num_blocks
from splitnn.partition import load_part_state

EXITS_OFF = 1.01  # a threshold no softmax probability meets: the exits never answer
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, EXITS_OFF)
EPOCHS = 40
BATCH = 64
LEARNING_RATE = 1e-2
WEIGHT_DECAY = 1e-4
_FORWARD_BATCH = 256  # samples per backbone pass while features are collected


class CalibrationError(AresError, ValueError):
    """Calibration cannot run on what it was given, or a stored calibration is malformed."""


@dataclass(frozen=True)
class OperatingPoint:
    """What one (cut, threshold) setting delivers on the validation half."""

    cut: int
    threshold: float
    exit_fraction: dict[int, float]  # per exit position <= cut: the share of samples leaving
    accuracy: float  # of the answers: the exits' for those that left, the full model's else

    @property
    def local_fraction(self) -> float:
        """The share answered on the device, by an exit."""
        return sum(self.exit_fraction.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (``local_fraction`` included for readers; ``from_dict`` recomputes it)."""
        return {
            "cut": self.cut,
            "threshold": self.threshold,
            "exit_fraction": {str(p): f for p, f in self.exit_fraction.items()},
            "accuracy": self.accuracy,
            "local_fraction": self.local_fraction,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperatingPoint:
        doc = _parse(_PointDoc, data, "operating point")
        return cls(doc.cut, doc.threshold, dict(doc.exit_fraction), doc.accuracy)


@dataclass(frozen=True)
class Calibration:
    """The exits of a trained model: where they are, their weights, and what they achieve."""

    positions: tuple[int, ...]
    exit_state: dict[str, Tensor]  # the state dict of build_exits(spec, positions)
    full_accuracy: float
    exit_accuracy: dict[int, float]  # each exit answering every sample
    points: tuple[OperatingPoint, ...]  # every cut 1..L x every threshold
    deepest_exit_accuracy: dict[int, float | None]  # per cut 1..L: the deepest exit <= cut
    samples: int  # in the validation half, which every accuracy above is measured on
    train_samples: int = 0  # in the calibration half, which trained the heads
    thresholds: tuple[float, ...] = THRESHOLDS

    @property
    def blocks(self) -> int:
        """L, the model's block count (cuts are 1..L)."""
        return max(self.deepest_exit_accuracy, default=0)

    def point(self, cut: int, threshold: float) -> OperatingPoint:
        """The operating point measured at ``cut`` and ``threshold``; KeyError if none was."""
        for point in self.points:
            if point.cut == cut and math.isclose(point.threshold, threshold):
                return point
        raise KeyError(f"no operating point at cut {cut}, threshold {threshold}")

    def to_dict(self) -> dict[str, Any]:
        """Everything but the heads' weights (``exit_state``), as JSON-able data."""
        return {
            "positions": list(self.positions),
            "full_accuracy": self.full_accuracy,
            "exit_accuracy": {str(p): a for p, a in self.exit_accuracy.items()},
            "points": [point.to_dict() for point in self.points],
            "deepest_exit_accuracy": {str(c): a for c, a in self.deepest_exit_accuracy.items()},
            "samples": self.samples,
            "train_samples": self.train_samples,
            "thresholds": list(self.thresholds),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], exit_state: Mapping[str, Tensor] | None = None
    ) -> Calibration:
        """The inverse of ``to_dict``; the heads' weights come separately (none: an empty
        state, enough for the curves). A malformed ``data`` is a CalibrationError."""
        doc = _parse(_CalibrationDoc, data, "calibration")
        positions = tuple(doc.positions)
        if list(positions) != sorted(set(positions)):
            raise CalibrationError(f"calibration: positions {list(positions)} are not ascending")
        if set(doc.exit_accuracy) != set(positions):
            raise CalibrationError("calibration: exit_accuracy does not cover the positions")
        return cls(
            positions=positions,
            exit_state=dict(exit_state or {}),
            full_accuracy=doc.full_accuracy,
            exit_accuracy=dict(doc.exit_accuracy),
            points=tuple(
                OperatingPoint(p.cut, p.threshold, dict(p.exit_fraction), p.accuracy)
                for p in doc.points
            ),
            deepest_exit_accuracy=dict(doc.deepest_exit_accuracy),
            samples=doc.samples,
            train_samples=doc.train_samples,
            thresholds=tuple(doc.thresholds),
        )


# --- the JSON form, checked where it is read -----------------------------------------------

_Fraction = Field(ge=0, le=1, allow_inf_nan=False)


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


DocT = TypeVar("DocT", bound=_Doc)


class _PointDoc(_Doc):
    cut: int = Field(ge=1)
    threshold: float = Field(gt=0, allow_inf_nan=False)
    exit_fraction: dict[int, float]
    accuracy: float = _Fraction
    local_fraction: float | None = None  # derived: read and recomputed


class _CalibrationDoc(_Doc):
    positions: list[int]
    full_accuracy: float = _Fraction
    exit_accuracy: dict[int, float]
    points: list[_PointDoc]
    deepest_exit_accuracy: dict[int, float | None]
    samples: int = Field(ge=1)
    train_samples: int = Field(default=0, ge=0)
    thresholds: list[float] = Field(default_factory=lambda: list(THRESHOLDS))


def _parse(model: type[DocT], data: Mapping[str, Any], what: str) -> DocT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise CalibrationError(
            f"{what} is malformed: {where}: {first['msg']} ({exc.error_count()} problems)"
        ) from None


# --- calibrating -----------------------------------------------------------------------------


def calibrate(
    spec: ModelSpec,
    state: Mapping[str, Tensor],
    data: ArrayDataset,
    *,
    positions: Iterable[int] | None = None,
    epochs: int = EPOCHS,
    seed: int = 0,
    holdout_fraction: float = 0.5,
    thresholds: Sequence[float] = THRESHOLDS,
    device: torch.device | str = "cpu",
) -> Calibration:
    """Train exit heads at ``positions`` (default: ``default_exit_positions``) on the trained
    model ``state`` with the backbone frozen, and measure them (see the module docstring).

    Deterministic for a given ``seed``; torch's global RNG is left as it was. Slow (torch work
    over the whole held-out set): run it in a worker thread from async code.
    """
    if data.input_shape != spec.input_shape or data.num_classes != spec.num_classes:
        raise CalibrationError(
            f"held-out set {data.name} has samples of shape {data.input_shape} in "
            f"{data.num_classes} classes; {spec.name} takes {spec.input_shape} in "
            f"{spec.num_classes}"
        )
    if epochs < 1:
        raise CalibrationError(f"epochs must be >= 1, got {epochs}")
    chosen = default_exit_positions(spec) if positions is None else check_positions(spec, positions)
    fit, check = stratified_halves(data.y, holdout_fraction, seed)
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: not the caller's
        torch.manual_seed(seed)
        exits = build_exits(spec, chosen)
        model = build_model(spec)
    load_part_state(model, state)
    torch_device = torch.device(device)
    model.to(torch_device).eval()
    exits.to(torch_device)
    features, _ = _features(model, exits, data.x[fit], torch_device)
    labels = torch.from_numpy(data.y[fit]).to(torch_device)
    generator = torch.Generator().manual_seed(seed)
    for position, pooled in features.items():
        _train_linear(split_head(exits[str(position)])[1], pooled, labels, epochs, generator)
    exits.eval()
    # The validation half: who is right, and how sure each exit is.
    features, final = _features(model, exits, data.x[check], torch_device)
    truth = data.y[check]
    full_correct = final.argmax(dim=-1).cpu().numpy() == truth
    exit_confidence: dict[int, NDArray[np.float32]] = {}
    exit_correct: dict[int, NDArray[np.bool_]] = {}
    with torch.no_grad():
        for position, pooled in features.items():
            top, label = confidence(split_head(exits[str(position)])[1](pooled))
            exit_confidence[position] = top.cpu().numpy()
            exit_correct[position] = label.cpu().numpy() == truth
    blocks = num_blocks(spec)
    full_accuracy = float(full_correct.mean())
    exit_accuracy = {p: float(exit_correct[p].mean()) for p in chosen}
    return Calibration(
        positions=chosen,
        exit_state={k: v.detach().cpu().clone() for k, v in exits.state_dict().items()},
        full_accuracy=full_accuracy,
        exit_accuracy=exit_accuracy,
        points=operating_points(
            blocks, chosen, exit_confidence, exit_correct, full_correct, thresholds
        ),
        deepest_exit_accuracy={
            cut: _fallback_accuracy(cut, blocks, exit_accuracy, full_accuracy)
            for cut in range(1, blocks + 1)
        },
        samples=len(check),
        train_samples=len(fit),
        thresholds=tuple(thresholds),
    )


def _fallback_accuracy(
    cut: int, blocks: int, exit_accuracy: Mapping[int, float], full_accuracy: float
) -> float | None:
    """The deepest exit's at or below ``cut`` (the whole model's at cut L; None: no exit)."""
    if cut == blocks:
        return full_accuracy
    below = [p for p in exit_accuracy if p <= cut]
    return exit_accuracy[max(below)] if below else None


def stratified_halves(
    labels: NDArray[np.int64], holdout_fraction: float, seed: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``(calibration, validation)`` sample indices: ``holdout_fraction`` of each class's
    samples (rounded, drawn with ``seed``) validate, the rest calibrate; each half ascending."""
    if not 0 < holdout_fraction < 1:
        raise CalibrationError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    rng = np.random.default_rng(seed)
    fit: list[NDArray[np.int64]] = []
    check: list[NDArray[np.int64]] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held = int(len(members) * holdout_fraction + 0.5)
        check.append(members[:held])
        fit.append(members[held:])
    halves = (np.sort(np.concatenate(fit)), np.sort(np.concatenate(check)))
    if not all(len(half) for half in halves):
        raise CalibrationError(
            f"calibration needs held-out samples for both halves, got {len(labels)}"
        )
    return halves


def _features(
    model: nn.Sequential, exits: nn.ModuleDict, x: NDArray[np.float32], device: torch.device
) -> tuple[dict[int, Tensor], Tensor]:
    """Each exit's pooled input (its head without the linear layer) and the model's logits,
    over ``x`` in batches: pooling first keeps memory at a head's features, not activations."""
    pooled: dict[int, list[Tensor]] = {int(key): [] for key in exits}
    logits: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, len(x), _FORWARD_BATCH):
            h = torch.from_numpy(x[start : start + _FORWARD_BATCH]).to(device)
            for index, block in enumerate(model):
                h = block(h)
                if index + 1 in pooled:
                    pooled[index + 1].append(split_head(exits[str(index + 1)])[0](h))
            logits.append(h)
    return {p: torch.cat(parts) for p, parts in pooled.items()}, torch.cat(logits)


def _train_linear(
    linear: nn.Module, features: Tensor, labels: Tensor, epochs: int, generator: torch.Generator
) -> None:
    optimizer = torch.optim.Adam(linear.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    linear.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator).to(features.device)
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(linear(features[batch]), labels[batch])
            torch.autograd.backward(loss)
            optimizer.step()


def operating_points(
    blocks: int,
    positions: Sequence[int],
    exit_confidence: Mapping[int, NDArray[np.float32]],
    exit_correct: Mapping[int, NDArray[np.bool_]],
    full_correct: NDArray[np.bool_],
    thresholds: Sequence[float],
) -> tuple[OperatingPoint, ...]:
    """Every cut 1..``blocks`` x every threshold, from per-sample confidences and outcomes."""
    samples = len(full_correct)
    measured: dict[tuple[tuple[int, ...], float], tuple[dict[int, float], float]] = {}
    points = []
    for cut in range(1, blocks + 1):
        usable = tuple(p for p in positions if p <= cut)
        for threshold in thresholds:
            key = (usable, threshold)
            if key not in measured:
                remaining = np.ones(samples, dtype=bool)
                correct = 0
                fractions: dict[int, float] = {}
                for position in usable:
                    leaving = remaining & (exit_confidence[position] >= threshold)
                    fractions[position] = float(leaving.sum()) / samples
                    correct += int((leaving & exit_correct[position]).sum())
                    remaining &= ~leaving
                correct += int((remaining & full_correct).sum())
                measured[key] = fractions, correct / samples
            fractions, accuracy = measured[key]
            points.append(OperatingPoint(cut, float(threshold), dict(fractions), accuracy))
    return tuple(points)


__all__ = [
    "EXITS_OFF",
    "THRESHOLDS",
    "Calibration",
    "CalibrationError",
    "OperatingPoint",
    "calibrate",
    "operating_points",
    "stratified_halves",
]
