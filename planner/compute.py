"""A board's compute time for any model, from what each block does and rates fitted to the board.

A model's blocks cost what they compute and what they move (:class:`BlockCosts`, counted by
``testbed.block_costs`` from the model itself). A board is known by its measured per-block times
of one reference model (the paper's VGG5 at batch 100). :class:`BoardCompute` fits, per phase,

    t_block = per_flop_s * FLOPs + per_byte_s * bytes

to those measurements and prices any other model's blocks with it; the reference model itself
keeps its measured times. Pure arithmetic: no torch, no clock.

How the rates are fitted (:func:`fit_phase`), and why:

- The paper measured *cumulative* times, one per cut; the per-block times are their differences.
  So the fit is least squares over the cumulative times (the cost of blocks ``[0, s)`` against the
  measured time at cut ``s``, for every cut), not over the noisy differences, which for the Nano
  dip below zero.
- Both rates are non-negative (a block never saves time by computing more), found exactly: the
  unconstrained 2x2 solution if both rates come out non-negative, else the better one-rate fit.
- The rates are then scaled by one factor so that the reference model's fitted total equals its
  measured total exactly: a board's overall speed is its best-measured figure, and any board
  priced this way keeps the measured order of the boards.

How well it fits the paper's VGG5 (per cut, fitted against measured cumulative times; the table is
in ``docs/benchmarks.md`` and ``tests/planner/test_compute.py`` prints it): the Raspberry Pi
within 12% at every cut in both phases. The Jetson Nano's measurements put two thirds of VGG5's
time in its two dense layers (6% of its FLOPs), which no non-negative mix of FLOPs and bytes
reproduces (per-kernel overheads dominate a GPU at these sizes): its forward byte rate fits to
zero, so the Nano prices a model by its FLOPs at VGG5's measured rate, exact in total but up to
4.1x too slow at its early cuts (cut 3 forward: 0.082 s fitted, 0.020 s measured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import accumulate

from planner.errors import PlanningError

__all__ = ["BlockCosts", "BoardCompute", "FitRow", "PhaseRates", "fit_phase"]

Times = tuple[float, ...]


def _counts(name: str, values: tuple[int, ...]) -> tuple[int, ...]:
    out = tuple(values)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in out):
        raise PlanningError(name, f"must be ints >= 0, got {values!r}")
    return out


@dataclass(frozen=True, slots=True)
class BlockCosts:
    """What each block of a model does, per sample and per batch.

    ``flops[i]``: multiply-accumulates of block ``i`` per sample (a convolution's or a dense
    layer's; one per element for normalisation and activations, one per window element for
    pooling).
    ``moved_bytes[i]``: bytes its layers read and write per sample (each layer's input and
    output activations). ``param_bytes[i]``: its weights and buffers, read once per batch.
    """

    flops: tuple[int, ...]
    moved_bytes: tuple[int, ...]
    param_bytes: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("flops", "moved_bytes", "param_bytes"):
            object.__setattr__(self, name, _counts(name, getattr(self, name)))
        blocks = len(self.flops)
        if not blocks:
            raise PlanningError("flops", "needs at least one block")
        for name in ("moved_bytes", "param_bytes"):
            if len(getattr(self, name)) != blocks:
                raise PlanningError(name, f"needs {blocks} entries (one per block)")

    @property
    def num_blocks(self) -> int:
        return len(self.flops)

    def at(self, batch: int) -> tuple[Times, Times]:
        """Per block, (FLOPs, bytes) of one batch: activations scale with it, weights do not."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise PlanningError("batch", f"must be a positive int, got {batch!r}")
        flops = tuple(float(f * batch) for f in self.flops)
        moved = tuple(
            float(m * batch + p) for m, p in zip(self.moved_bytes, self.param_bytes, strict=True)
        )
        return flops, moved


@dataclass(frozen=True, slots=True)
class PhaseRates:
    """Seconds per multiply-accumulate and per byte moved, for one phase on one board."""

    per_flop_s: float
    per_byte_s: float

    def times(self, costs: BlockCosts, batch: int) -> Times:
        """Seconds per block for a batch of ``batch`` samples."""
        flops, moved = costs.at(batch)
        return tuple(
            self.per_flop_s * f + self.per_byte_s * b for f, b in zip(flops, moved, strict=True)
        )


def fit_phase(measured_s: Times, costs: BlockCosts, batch: int) -> PhaseRates:
    """The rates that best explain ``measured_s`` (per-block seconds of ``costs``' model at
    ``batch``), fitted over the cumulative times and scaled to the measured total (see the
    module docstring)."""
    if len(measured_s) != costs.num_blocks:
        raise PlanningError(
            "measured_s", f"has {len(measured_s)} blocks but the costs have {costs.num_blocks}"
        )
    if any(not math.isfinite(t) or t < 0 for t in measured_s):
        raise PlanningError("measured_s", f"must be finite and >= 0, got {measured_s!r}")
    flops, moved = costs.at(batch)
    x, y, c = (tuple(accumulate(v)) for v in (flops, moved, measured_s))
    # Each column over its largest entry keeps the 2x2 system well scaled (1e9 FLOPs vs 1 s).
    sx, sy = max(x) or 1.0, max(y) or 1.0
    x, y = tuple(v / sx for v in x), tuple(v / sy for v in y)
    a, b = _nnls2(x, y, c)
    a, b = a / sx, b / sy
    fitted_total = a * x[-1] * sx + b * y[-1] * sy
    if fitted_total > 0:
        scale = c[-1] / fitted_total
        a, b = a * scale, b * scale
    return PhaseRates(per_flop_s=a, per_byte_s=b)


def _nnls2(x: Times, y: Times, c: Times) -> tuple[float, float]:
    """argmin ||a x + b y - c|| over a, b >= 0 (exact: the KKT cases of two variables)."""

    def dot(u: Times, v: Times) -> float:
        return sum(p * q for p, q in zip(u, v, strict=True))

    def residual(a: float, b: float) -> float:
        return sum((a * p + b * q - t) ** 2 for p, q, t in zip(x, y, c, strict=True))

    xx, yy, xy, xc, yc = dot(x, x), dot(y, y), dot(x, y), dot(x, c), dot(y, c)
    candidates = [(0.0, 0.0)]
    if xx > 0:
        candidates.append((max(xc / xx, 0.0), 0.0))
    if yy > 0:
        candidates.append((0.0, max(yc / yy, 0.0)))
    det = xx * yy - xy * xy
    if det > 1e-12 * xx * yy:
        a, b = (xc * yy - yc * xy) / det, (yc * xx - xc * xy) / det
        if a >= 0 and b >= 0:
            candidates.append((a, b))
    return min(candidates, key=lambda ab: residual(*ab))


@dataclass(frozen=True, slots=True)
class FitRow:
    """One cut of the fit: the measured and fitted time of blocks ``[0, cut)``."""

    phase: str
    cut: int
    measured_s: float
    fitted_s: float

    @property
    def error(self) -> float:
        """(fitted - measured) / measured; 0 where both are 0, inf where only measured is."""
        if self.measured_s == 0:
            return 0.0 if self.fitted_s == 0 else math.inf
        return (self.fitted_s - self.measured_s) / self.measured_s


@dataclass(frozen=True, slots=True)
class BoardCompute:
    """A board's compute: its measured per-block times of a reference model, and the rates
    fitted to them that price any other model (:meth:`block_times`)."""

    forward_s: Times
    backward_s: Times
    reference: BlockCosts
    reference_batch: int = 100
    forward_rates: PhaseRates = field(init=False)
    backward_rates: PhaseRates = field(init=False)

    def __post_init__(self) -> None:
        forward = fit_phase(self.forward_s, self.reference, self.reference_batch)
        backward = fit_phase(self.backward_s, self.reference, self.reference_batch)
        object.__setattr__(self, "forward_rates", forward)
        object.__setattr__(self, "backward_rates", backward)

    def block_times(self, costs: BlockCosts, batch: int) -> tuple[Times, Times]:
        """(forward, backward) seconds per block of ``costs``' model at ``batch``: the measured
        times (in proportion to the batch) for the reference model, the fitted rates otherwise."""
        if costs == self.reference:
            factor = batch / self.reference_batch
            return (
                tuple(t * factor for t in self.forward_s),
                tuple(t * factor for t in self.backward_s),
            )
        return self.forward_rates.times(costs, batch), self.backward_rates.times(costs, batch)

    def fit_table(self) -> tuple[FitRow, ...]:
        """The fit against the measurements it was made from, per phase and cut."""
        rows: list[FitRow] = []
        for phase, measured, rates in (
            ("forward", self.forward_s, self.forward_rates),
            ("backward", self.backward_s, self.backward_rates),
        ):
            fitted = rates.times(self.reference, self.reference_batch)
            for cut, (m, f) in enumerate(
                zip(accumulate(measured), accumulate(fitted), strict=True), 1
            ):
                rows.append(FitRow(phase, cut, m, f))
        return tuple(rows)
