"""Federated averaging of full-model state dicts: all at once (``fedavg``) or part by part as
the parts arrive (``FedAvgSum``), with the same rules; and hierarchically: several sums (one per
edge replica) merged into one (``FedAvgSum.partial`` and ``merge``) give the average one sum
over all the parts would."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from splitnn.errors import SplitError


def _check_compatible(states: Sequence[Mapping[str, Tensor]]) -> None:
    reference = states[0]
    for i, state in enumerate(states[1:], start=1):
        if state.keys() != reference.keys():
            diff = sorted(state.keys() ^ reference.keys())
            raise SplitError(f"state {i} and state 0 differ in keys {diff}")
        for key, ref in reference.items():
            other = state[key]
            if other.shape != ref.shape or other.dtype != ref.dtype:
                raise SplitError(
                    f"state {i} has {key} as {other.dtype}{tuple(other.shape)}, "
                    f"state 0 as {ref.dtype}{tuple(ref.shape)}"
                )


def _check_weights(weights: Sequence[float]) -> None:
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise SplitError(
            f"weights must be finite, non-negative and sum to > 0, got {list(weights)}"
        )


def _cast_back(mean: Tensor, ref: Tensor) -> Tensor:
    """A float64 mean in the reference's dtype: integer buffers (BatchNorm's
    ``num_batches_tracked``) get it rounded to the nearest integer."""
    return (mean if ref.is_floating_point() else mean.round()).to(ref.dtype)


def fedavg(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """Weighted mean of state dicts (weights are usually sample counts).

    Floats are accumulated in float64 and cast back; integer buffers such as BatchNorm's
    ``num_batches_tracked`` get the weighted mean rounded to the nearest integer.
    """
    if not states or len(states) != len(weights):
        raise SplitError(
            f"need one weight per state, got {len(states)} states, {len(weights)} weights"
        )
    _check_weights(weights)
    _check_compatible(states)
    if len(states) == 1:
        return {k: v.detach().clone() for k, v in states[0].items()}

    total = math.fsum(weights)
    averaged: dict[str, Tensor] = {}
    for key, ref in states[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64, device=ref.device)
        for state, weight in zip(states, weights, strict=True):
            acc += state[key].detach().to(torch.float64) * (weight / total)
        averaged[key] = _cast_back(acc, ref)
    return averaged


@dataclass(frozen=True)
class FedAvgPartial:
    """What one sum holds: the float64 weighted sums, the weights, and the parts' dtypes (its
    reference). Another sum merges it exactly as if it had added those parts itself."""

    sums: Mapping[str, Tensor]  # float64
    weights: tuple[float, ...]
    dtypes: Mapping[str, torch.dtype]


class FedAvgSum:
    """``fedavg`` accumulated as the parts arrive: a running weighted sum in float64, so the
    average of the last part costs one addition and a division instead of a pass over every
    part. Equal to ``fedavg`` of the parts added, within float rounding (the weights divide
    the sum once at the end instead of each term).

    ``add`` may be called from several threads (the edge's compute pool) at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reference: dict[str, Tensor] = {}  # the first part: keys, shapes, dtypes
        self._sums: dict[str, Tensor] = {}
        self._weights: list[float] = []

    @property
    def parts(self) -> int:
        return len(self._weights)

    def add(self, state: Mapping[str, Tensor], weight: float) -> None:
        if not math.isfinite(weight) or weight < 0:
            raise SplitError(f"weight must be finite and non-negative, got {weight}")
        with self._lock:
            if self._reference:
                _check_compatible([self._reference, state])
            else:
                self._reference = dict(state)
                self._sums = {
                    k: torch.zeros(v.shape, dtype=torch.float64, device=v.device)
                    for k, v in state.items()
                }
            for key, value in state.items():
                self._sums[key] += value.detach().to(torch.float64) * weight
            self._weights.append(weight)

    def partial(self) -> FedAvgPartial:
        """A copy of what this sum holds, for another sum to :meth:`merge` (a replica's share
        of a round, sent to the coordinator)."""
        with self._lock:
            if not self._weights:
                raise SplitError("no part to hand on")
            return FedAvgPartial(
                sums={k: s.clone() for k, s in self._sums.items()},
                weights=tuple(self._weights),
                dtypes={k: v.dtype for k, v in self._reference.items()},
            )

    def merge(self, partial: FedAvgPartial) -> None:
        """Add another sum's parts, as if each had been added here (weighted by its samples:
        the merged average equals one FedAvg over every part, within float64 rounding)."""
        for weight in partial.weights:
            if not math.isfinite(weight) or weight < 0:
                raise SplitError(f"weight must be finite and non-negative, got {weight}")
        if partial.sums.keys() != partial.dtypes.keys():
            raise SplitError("a partial sum's sums and dtypes name different tensors")
        with self._lock:
            if self._reference:
                mine = {k: (v.dtype, tuple(v.shape)) for k, v in self._reference.items()}
                theirs = {k: (partial.dtypes[k], tuple(v.shape)) for k, v in partial.sums.items()}
                if mine != theirs:
                    diff = sorted(k for k in mine.keys() | theirs.keys()
                                  if mine.get(k) != theirs.get(k))  # fmt: skip
                    raise SplitError(f"a partial sum differs from this one in {diff}")
            else:
                self._reference = {
                    k: torch.empty(v.shape, dtype=partial.dtypes[k], device=v.device)
                    for k, v in partial.sums.items()
                }
                self._sums = {
                    k: torch.zeros(v.shape, dtype=torch.float64, device=v.device)
                    for k, v in partial.sums.items()
                }
            for key, value in partial.sums.items():
                self._sums[key] += value.to(torch.float64)
            self._weights.extend(partial.weights)

    def average(self) -> dict[str, Tensor]:
        """The weighted mean of the parts added so far."""
        with self._lock:
            if not self._weights:
                raise SplitError("no part to average")
            _check_weights(self._weights)
            total = math.fsum(self._weights)
            return {k: _cast_back(s / total, self._reference[k]) for k, s in self._sums.items()}
