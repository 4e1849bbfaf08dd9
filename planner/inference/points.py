"""What the exits of a trained model can do: its operating points, and what a device saw online.

An operating point is one (cut, threshold) a device can run: with its blocks ``1..cut`` and the
exits at positions ``<= cut`` sharing ``threshold``, the fraction of requests that leave at each
exit position (``exit_fraction``) and the accuracy of all answers together, local and edge's. The
table comes from the model (calibration on held-out data), so all devices share it; the serving
runtime converts its own calibration records into these types, or passes any objects with the
same attributes (:class:`OperatingPointLike`): the planner imports nothing of serving.

A threshold above 1 turns the exits off (no softmax confidence reaches it): the device runs to its
cut and the edge answers, or, at cut L, the full model answers on the device. Such a point needs
no calibration: it has the full model's accuracy and no early exits, and :class:`ExitTable` adds
one for every cut the table leaves out.

Online correction (:func:`corrected_fraction`). The held-out set is not the device's data: a
device whose requests are harder than the held-out set sees its exits fire less. A device may
report the local fraction it observed at its current (cut, threshold) over ``requests`` requests;
the table's early-exit fractions at every point are then scaled for that device by

    k = 1 + n / (n + n0) * (clip(observed / expected, k_min, k_max) - 1)

with ``expected`` the table's early-exit fraction at that point, ``n`` the requests observed and
``n0`` a pseudo-count (default 50): a few requests move the table little, many move it up to the
observed ratio. Why one ratio for every point: the drift is a property of the device's data (how
confident the exits are on it), not of one threshold; a ratio keeps the table's shape (deeper
exits and lower thresholds still let more requests out) while matching its level to what the
device sees. Clipping (default [0.25, 4]) bounds what a burst of odd requests can do. If scaling
pushes a point's fractions past 1 they are scaled back to sum to 1. Accuracy is not corrected:
online there are no labels to measure it with. A point the device cannot compare against (its
expected early-exit fraction is 0, e.g. exits off) carries no information: k = 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from planner.errors import PlanningError

__all__ = [
    "EXITS_OFF",
    "Correction",
    "ExitTable",
    "ObservedExits",
    "OperatingPoint",
    "OperatingPointLike",
    "corrected_fraction",
    "exit_ratio",
    "exits_on",
]

EXITS_OFF = 1.01  # a threshold no softmax confidence reaches: the exits never fire
_SUM_TOLERANCE = 1e-9


def exits_on(threshold: float) -> bool:
    """Whether a threshold lets exits fire (a softmax confidence is at most 1)."""
    return threshold <= 1.0


class OperatingPointLike(Protocol):
    """Anything with an operating point's attributes (the serving calibration's records)."""

    @property
    def cut(self) -> int: ...
    @property
    def threshold(self) -> float: ...
    @property
    def exit_fraction(self) -> Mapping[int, float]: ...
    @property
    def accuracy(self) -> float: ...


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """At device cut ``cut`` with the exits at positions ``<= cut`` sharing ``threshold``: the
    fraction of requests answered by each early exit (keyed by position) and the accuracy of all
    answers. The remaining ``1 - sum(exit_fraction)`` go to the edge (or, at cut L, are answered
    by the full model on the device)."""

    cut: int
    threshold: float
    exit_fraction: Mapping[int, float] = field(default_factory=dict)
    accuracy: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.cut, bool) or not isinstance(self.cut, int) or self.cut < 0:
            raise PlanningError("cut", f"must be an int >= 0, got {self.cut!r}")
        if _number("threshold", self.threshold) < 0.0:
            raise PlanningError("threshold", f"must be >= 0, got {self.threshold!r}")
        _fraction("accuracy", self.accuracy)
        fractions: dict[int, float] = {}
        for position, value in dict(self.exit_fraction).items():
            where = f"exit_fraction[{position!r}]"
            if isinstance(position, bool) or not isinstance(position, int):
                raise PlanningError(where, "exit positions must be ints")
            if not 1 <= position <= self.cut:
                raise PlanningError(where, f"an exit of cut {self.cut} lies in 1..{self.cut}")
            _fraction(where, value)
            fractions[position] = float(value)
        if not exits_on(self.threshold) and any(fractions.values()):
            raise PlanningError("exit_fraction", f"exits are off at threshold {self.threshold}")
        if sum(fractions.values()) > 1.0 + _SUM_TOLERANCE:
            raise PlanningError("exit_fraction", f"sums to {sum(fractions.values())} > 1")
        object.__setattr__(self, "exit_fraction", dict(sorted(fractions.items())))

    @classmethod
    def of(cls, point: OperatingPointLike) -> OperatingPoint:
        """A copy of any object with the attributes (validated)."""
        if isinstance(point, OperatingPoint):
            return point
        return cls(point.cut, point.threshold, dict(point.exit_fraction), point.accuracy)

    @property
    def exits(self) -> bool:
        return exits_on(self.threshold)

    @property
    def early_fraction(self) -> float:
        """The share of requests answered by an early exit."""
        return min(sum(self.exit_fraction.values()), 1.0)

    def setting(self) -> tuple[int, float]:
        return (self.cut, self.threshold)


@dataclass(frozen=True, slots=True)
class ExitTable:
    """The model's operating points and the accuracies serving needs.

    ``exit_positions``: where the model's early exits sit (after block p, ``1 <= p <= L``).
    ``deepest_exit_accuracy[c]``: the accuracy of the deepest exit at or below cut c on its own
    (what a device at cut c answers when the edge is gone); None or absent where no exit lies at
    or below c. ``full_accuracy``: the unsplit model's. For every cut ``0..num_blocks`` without an
    exits-off point, one is added with ``full_accuracy`` and no early exits.
    """

    num_blocks: int
    points: tuple[OperatingPoint, ...]
    full_accuracy: float
    exit_positions: tuple[int, ...] = ()
    deepest_exit_accuracy: Mapping[int, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int):
            raise PlanningError("num_blocks", f"must be an int, got {self.num_blocks!r}")
        if self.num_blocks < 1:
            raise PlanningError("num_blocks", f"must be >= 1, got {self.num_blocks}")
        L = self.num_blocks
        _fraction("full_accuracy", self.full_accuracy)
        positions = tuple(sorted(set(self.exit_positions)))
        for position in positions:
            if isinstance(position, bool) or not isinstance(position, int):
                raise PlanningError("exit_positions", f"must be ints, got {position!r}")
            if not 1 <= position <= L:
                raise PlanningError("exit_positions", f"{position} is outside 1..{L}")
        object.__setattr__(self, "exit_positions", positions)
        points: dict[tuple[int, float], OperatingPoint] = {}
        for given in self.points:
            point = OperatingPoint.of(given)
            if point.cut > L:
                raise PlanningError("points", f"cut {point.cut} is outside 0..{L}")
            stray = sorted(set(point.exit_fraction) - set(positions))
            if stray and positions:
                raise PlanningError("points", f"cut {point.cut}: no exit at positions {stray}")
            if point.setting() in points:
                raise PlanningError("points", f"two points for cut {point.cut}, {point.threshold}")
            if not point.exits and any(c == point.cut and not exits_on(t) for c, t in points):
                raise PlanningError("points", f"two exits-off points for cut {point.cut}")
            points[point.setting()] = point
        if not positions:  # positions not given: the points name them
            positions = tuple(sorted({p for point in points.values() for p in point.exit_fraction}))
            object.__setattr__(self, "exit_positions", positions)
        for cut in range(L + 1):
            if not any(c == cut and not exits_on(t) for c, t in points):
                points[(cut, EXITS_OFF)] = OperatingPoint(cut, EXITS_OFF, {}, self.full_accuracy)
        object.__setattr__(self, "points", tuple(points[k] for k in sorted(points)))
        accuracies: dict[int, float | None] = {}
        for cut, value in dict(self.deepest_exit_accuracy).items():
            if value is not None:
                _fraction(f"deepest_exit_accuracy[{cut!r}]", value)
            accuracies[int(cut)] = None if value is None else float(value)
        object.__setattr__(self, "deepest_exit_accuracy", accuracies)

    @classmethod
    def from_points(
        cls,
        num_blocks: int,
        points: Iterable[OperatingPointLike],
        *,
        full_accuracy: float,
        exit_positions: Iterable[int] = (),
        deepest_exit_accuracy: Mapping[int, float | None] | None = None,
    ) -> ExitTable:
        """A table from any operating-point records (e.g. the serving calibration's)."""
        return cls(
            num_blocks=num_blocks,
            points=tuple(OperatingPoint.of(p) for p in points),
            full_accuracy=full_accuracy,
            exit_positions=tuple(exit_positions),
            deepest_exit_accuracy=dict(deepest_exit_accuracy or {}),
        )

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The distinct thresholds of the table, exits off included, ascending."""
        return tuple(sorted({p.threshold for p in self.points}))

    def point(self, cut: int, threshold: float) -> OperatingPoint | None:
        for point in self.points:
            if point.cut == cut and point.threshold == threshold:
                return point
        return None

    def exits_off(self, cut: int) -> OperatingPoint:
        """The exits-off point of ``cut`` (every cut has one)."""
        for point in self.points:
            if point.cut == cut and not point.exits:
                return point
        raise PlanningError("cut", f"{cut} is outside 0..{self.num_blocks}")

    def deepest_exit(self, cut: int) -> tuple[int | None, float | None]:
        """What a device at ``cut`` answers alone: the deepest exit position at or below it and
        that exit's accuracy (cut L: the full model itself, position L); (None, None) if none."""
        if cut >= self.num_blocks:
            return self.num_blocks, self.full_accuracy
        below = [p for p in self.exit_positions if p <= cut]
        if not below:
            return None, None
        return below[-1], self.deepest_exit_accuracy.get(cut)


@dataclass(frozen=True, slots=True)
class ObservedExits:
    """What a device measured online: its early-exit fraction at (cut, threshold) over
    ``requests`` requests (see the module docstring for how it corrects the table)."""

    cut: int
    threshold: float
    early_fraction: float
    requests: int

    def __post_init__(self) -> None:
        _fraction("early_fraction", self.early_fraction)
        if isinstance(self.requests, bool) or not isinstance(self.requests, int):
            raise PlanningError("requests", f"must be an int, got {self.requests!r}")
        if self.requests < 0:
            raise PlanningError("requests", f"must be >= 0, got {self.requests}")


@dataclass(frozen=True, slots=True)
class Correction:
    """How strongly observed exit rates pull the table: pseudo-count and ratio bounds."""

    pseudo_count: float = 50.0
    min_ratio: float = 0.25
    max_ratio: float = 4.0


def exit_ratio(
    table: ExitTable, observed: ObservedExits | None, correction: Correction | None = None
) -> float:
    """The factor k of the module docstring for one device (1.0: no correction)."""
    correction = correction or Correction()
    if observed is None or observed.requests == 0:
        return 1.0
    point = table.point(observed.cut, observed.threshold)
    if point is None or point.early_fraction <= 0.0:
        return 1.0
    ratio = observed.early_fraction / point.early_fraction
    ratio = min(max(ratio, correction.min_ratio), correction.max_ratio)
    weight = observed.requests / (observed.requests + correction.pseudo_count)
    return 1.0 + weight * (ratio - 1.0)


def corrected_fraction(point: OperatingPoint, ratio: float) -> dict[int, float]:
    """``point``'s early-exit fractions scaled by ``ratio``, scaled back to sum 1 if above."""
    scaled = {p: f * ratio for p, f in point.exit_fraction.items()}
    total = sum(scaled.values())
    if total > 1.0:
        scaled = {p: f / total for p, f in scaled.items()}
    return scaled


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanningError(name, f"must be a finite number, got {value!r}")
    return float(value)


def _fraction(name: str, value: object) -> None:
    if not 0.0 <= _number(name, value) <= 1.0:
        raise PlanningError(name, f"must lie in [0, 1], got {value!r}")
