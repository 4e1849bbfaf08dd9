"""The forward passes of serving, in plain synchronous torch (callers run them in one compute
thread): the device's part up to its cut, stopping at the first confident exit; the edge's part
from a cut to the logits; and the device's answer on its own when the edge is gone.

Block ``i`` of the model is the ``i``-th child of its ``nn.Sequential``; the activation at cut
``c`` is the output of blocks ``[0, c)``; an exit at position ``p`` reads the activation at cut
``p`` (``splitnn.exits``). Confidence is the top softmax probability of the head that answers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from splitnn.errors import SplitError
from splitnn.models import ModelSpec, cut_shapes
from splitnn.tensors import to_numpy


@dataclass(frozen=True, slots=True)
class Answer:
    """A label from one head: an exit at ``exit``, or the whole model (``exit`` None)."""

    label: int
    confidence: float
    exit: int | None


@dataclass(frozen=True, slots=True)
class Handoff:
    """What a request that no exit answered leaves: the activation at its cut, for the edge,
    and what the device needs to answer alone if the edge does not (see
    :meth:`DeviceModel.answer_alone`)."""

    activation: np.ndarray  # (1, *cut shape), float32
    cut: int
    # The deepest activation kept for a fallback: (its cut, the tensor).
    kept: tuple[int, torch.Tensor]


class DeviceModel:
    """The whole model and its exits as a device holds them (every block, every exit)."""

    def __init__(self, model: nn.Sequential, exits: nn.ModuleDict) -> None:
        self.blocks: Sequence[nn.Module] = list(model.eval())
        self.exits = exits.eval()
        self.positions = tuple(sorted(int(p) for p in exits))
        self.num_blocks = len(self.blocks)
        bad = [p for p in self.positions if not 1 <= p < self.num_blocks]
        if bad:
            raise SplitError(f"exits at {bad} are not between the model's {self.num_blocks} blocks")

    def profile(
        self, input_shape: tuple[int, ...], repeats: int = 5
    ) -> tuple[tuple[float, ...], dict[int, float]]:
        """Seconds per sample of each block's forward pass and of each exit head, here: the
        median of ``repeats`` passes of a zero sample, after one warm-up pass."""
        block_times: list[list[float]] = [[] for _ in self.blocks]
        exit_times: dict[int, list[float]] = {p: [] for p in self.positions}
        with torch.inference_mode():
            for run in range(repeats + 1):
                h = torch.zeros(1, *input_shape)
                for index, block in enumerate(self.blocks):
                    began = time.perf_counter()
                    h = block(h)
                    block_times[index].append(time.perf_counter() - began)
                    if index + 1 in exit_times:
                        began = time.perf_counter()
                        self.exits[str(index + 1)](h)
                        exit_times[index + 1].append(time.perf_counter() - began)
                if run == 0:  # the warm-up: allocations, lazy initialisation
                    block_times = [[] for _ in self.blocks]
                    exit_times = {p: [] for p in self.positions}
        forward = tuple(statistics.median(times) for times in block_times)
        return forward, {p: statistics.median(times) for p, times in exit_times.items()}

    def fallback_position(self, cut: int | None, preferred: int | None = None) -> int:
        """Where the device answers alone at ``cut``: ``preferred`` if it is an exit; at cut L
        the whole model (L); else the deepest exit at or below the cut, else the shallowest
        above it. Without a cut (no plan yet): the deepest exit. Without exits: L."""
        if preferred is not None and preferred in self.positions:
            return preferred
        if not self.positions or (cut is not None and cut >= self.num_blocks):
            return self.num_blocks
        if cut is None:
            return self.positions[-1]
        below = [p for p in self.positions if p <= cut]
        return below[-1] if below else next(p for p in self.positions if p > cut)

    def run(
        self, sample: np.ndarray, cut: int, threshold: float | None, fallback: int
    ) -> Answer | Handoff:
        """Blocks ``[0, cut)`` on one sample, leaving at the first exit at or below ``cut``
        whose confidence reaches ``threshold`` (None: exits off). At cut L the whole model
        answers. Otherwise the activation at ``cut`` is handed off."""
        if not 0 <= cut <= self.num_blocks:
            raise SplitError(f"cut {cut} is not in 0..{self.num_blocks}")
        with torch.inference_mode():
            h = torch.from_numpy(np.ascontiguousarray(sample)).unsqueeze(0)
            kept = (0, h)
            for index in range(cut):
                h = self.blocks[index](h)
                position = index + 1
                if position <= fallback:
                    kept = (position, h)
                if threshold is not None and position in self.positions:
                    answer = self._head(str(position), h, position)
                    if answer.confidence >= threshold:
                        return answer
            if cut == self.num_blocks:
                return _answer(h, None)
            return Handoff(to_numpy(h.contiguous()), cut, kept)

    def answer_directly(self, sample: np.ndarray, fallback: int) -> Answer:
        """The device's own answer with no plan or no edge: blocks ``[0, fallback)`` and the
        exit there (the whole model at L)."""
        h = torch.from_numpy(np.ascontiguousarray(sample)).unsqueeze(0)
        return self.answer_alone(Handoff(np.empty(0, np.float32), 0, (0, h)), fallback)

    def answer_alone(self, handoff: Handoff, fallback: int) -> Answer:
        """The device's own answer for a handed-off request: its exit at ``fallback`` (blocks
        past the cut run here first if it lies deeper), or the whole model at L."""
        start, h = handoff.kept
        with torch.inference_mode():
            for index in range(start, fallback):
                h = self.blocks[index](h)
            if fallback == self.num_blocks:
                return _answer(h, None)
            return self._head(str(fallback), h, fallback)

    def _head(self, key: str, h: torch.Tensor, position: int) -> Answer:
        return _answer(self.exits[key](h), position)


class EdgeModel:
    """The model as the serving edge holds it: it finishes forward passes from any cut."""

    def __init__(self, model: nn.Sequential, spec: ModelSpec) -> None:
        self.model = model.eval()
        self.num_blocks = len(model)
        # One sample's activation shape at each cut 0..L-1 (cut 0: the input).
        self.shapes = (spec.input_shape, *cut_shapes(spec)[:-1])

    def finish(self, cut: int, activations: Sequence[np.ndarray]) -> list[Answer]:
        """Blocks ``[cut, L)`` on a batch of activations at ``cut``, each of one sample's shape
        there (``shapes[cut]``) with or without a leading 1: one answer per activation."""
        if not 0 <= cut < self.num_blocks:
            raise SplitError(f"the edge finishes from cuts 0..{self.num_blocks - 1}, not {cut}")
        shape = self.shapes[cut]
        with torch.inference_mode():
            batch = torch.from_numpy(
                np.stack([np.asarray(a, dtype=np.float32).reshape(shape) for a in activations])
            )
            logits = self.model[cut:](batch)
            probabilities = torch.softmax(logits.float(), dim=1)
            confidence, labels = probabilities.max(dim=1)
        return [
            Answer(int(label), float(conf), None)
            for label, conf in zip(labels.tolist(), confidence.tolist(), strict=True)
        ]


def _answer(logits: torch.Tensor, position: int | None) -> Answer:
    probabilities = torch.softmax(logits.float(), dim=1)
    confidence, label = probabilities.max(dim=1)
    return Answer(int(label.item()), float(confidence.item()), position)
