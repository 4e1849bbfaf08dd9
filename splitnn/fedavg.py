"""Federated averaging of full-model state dicts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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


def fedavg(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """Weighted mean of state dicts (weights are usually sample counts).

    Floats are accumulated in float64 and cast back; integer buffers such as BatchNorm's
    ``num_batches_tracked`` get the weighted mean rounded to the nearest integer.
    """
    if not states or len(states) != len(weights):
        raise SplitError(
            f"need one weight per state, got {len(states)} states, {len(weights)} weights"
        )
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise SplitError(
            f"weights must be finite, non-negative and sum to > 0, got {list(weights)}"
        )
    _check_compatible(states)
    if len(states) == 1:
        return {k: v.detach().clone() for k, v in states[0].items()}

    total = math.fsum(weights)
    averaged: dict[str, Tensor] = {}
    for key, ref in states[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64, device=ref.device)
        for state, weight in zip(states, weights, strict=True):
            acc += state[key].detach().to(torch.float64) * (weight / total)
        averaged[key] = (acc if ref.is_floating_point() else acc.round()).to(ref.dtype)
    return averaged
