"""Measuring a model on the hardware it runs on: what the ARES planner needs per block.

``profile_blocks`` times every block's forward and backward pass separately (seconds per batch,
per block, not cumulative) and records the sizes that cross the cut and that training keeps in
memory. The planner's cumulative device time ``D_s`` is ``cumulative(forward + backward)[s - 1]``.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from numbers import Integral
from typing import Any

import torch
from torch import nn

from splitnn.errors import SplitError
from splitnn.models import ModelSpec, build_model, cut_shapes

__all__ = ["BlockProfile", "cumulative", "profile_blocks", "saved_bytes", "scale_profile"]

_TIME_FIELDS = ("forward_s", "backward_s")
_SIZE_FIELDS = ("activation_bytes", "param_bytes", "activation_memory_bytes")


@dataclass(frozen=True)
class BlockProfile:
    """Per-block costs of one model at one batch size on one device (all tuples have length L).

    ``forward_s[i]`` / ``backward_s[i]``: median seconds per batch of block ``i`` alone;
    backward covers both the gradient of the block's input and of its parameters.
    ``activation_bytes[i]``: bytes per batch crossing cut ``i + 1`` (block ``i``'s output) in
    the wire dtype; the last entry is the logits, which never travel, kept so lengths match.
    ``param_bytes[i]``: bytes of block ``i``'s state dict (parameters and buffers, each in its own
    dtype: float32 weights, BatchNorm's int64 counter), i.e. what moving the block's weights costs.
    ``activation_memory_bytes[i]``: bytes per batch block ``i`` keeps alive for backward (see
    ``profile_blocks``). ``device`` and ``torch_threads`` say where the times were taken.
    """

    forward_s: tuple[float, ...]
    backward_s: tuple[float, ...]
    batch_size: int
    activation_bytes: tuple[int, ...]
    param_bytes: tuple[int, ...]
    activation_memory_bytes: tuple[int, ...]
    device: str
    torch_threads: int

    def __post_init__(self) -> None:
        # Lists (as decoded from JSON) are accepted but stored as tuples to keep the profile frozen.
        for name in _TIME_FIELDS:
            object.__setattr__(self, name, _times(name, getattr(self, name)))
        for name in _SIZE_FIELDS:
            object.__setattr__(self, name, _sizes(name, getattr(self, name)))
        total = len(self.forward_s)
        if total == 0:
            raise SplitError("BlockProfile.forward_s needs at least one block")
        for name in (*_TIME_FIELDS, *_SIZE_FIELDS):
            length = len(getattr(self, name))
            if length != total:
                raise SplitError(
                    f"BlockProfile.{name} has {length} entries but forward_s has {total}"
                )
        for name in ("batch_size", "torch_threads"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise SplitError(f"BlockProfile.{name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not isinstance(self.device, str) or not self.device:
            raise SplitError(f"BlockProfile.device must be a non-empty string, got {self.device!r}")

    @property
    def num_blocks(self) -> int:
        """L, the number of blocks profiled."""
        return len(self.forward_s)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists, floats, ints, str); the inverse of ``from_dict``."""
        return {
            f.name: list(value) if isinstance(value := getattr(self, f.name), tuple) else value
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockProfile:
        """Rebuild from ``to_dict`` output; extra, missing or bad values are SplitErrors."""
        expected = {f.name for f in fields(cls)}
        if not isinstance(data, Mapping) or set(data) != expected:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise SplitError(f"block profile needs exactly the keys {sorted(expected)}, got {got}")
        return cls(**data)


def _is_int(value: object) -> bool:
    # Integral admits numpy ints; bool is Integral too, and JSON must not smuggle one in.
    return isinstance(value, Integral) and not isinstance(value, bool)


def _sequence(name: str, values: object) -> tuple[object, ...]:
    # A str or dict is iterable too, but never a valid per-block sequence.
    if not isinstance(values, list | tuple):
        raise SplitError(f"BlockProfile.{name} must be a list of numbers, got {values!r}")
    return tuple(values)


def _times(name: str, values: object) -> tuple[float, ...]:
    result: list[float] = []
    for v in _sequence(name, values):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise SplitError(f"BlockProfile.{name} entries must be finite and >= 0, got {v!r}")
        result.append(float(v))
    return tuple(result)


def _sizes(name: str, values: object) -> tuple[int, ...]:
    result: list[int] = []
    for v in _sequence(name, values):
        if isinstance(v, bool) or not isinstance(v, Integral) or v < 0:
            raise SplitError(f"BlockProfile.{name} entries must be ints >= 0, got {v!r}")
        result.append(int(v))
    return tuple(result)


def cumulative(times: Iterable[float]) -> tuple[float, ...]:
    """Running sums: entry ``s - 1`` is the time of blocks ``[0, s)`` (the planner's ``D_s``).

    The inverse of ``planner.per_block_from_cumulative`` for non-negative per-block times.
    """
    return tuple(itertools.accumulate(float(t) for t in times))


def scale_profile(profile: BlockProfile, factor: float) -> BlockProfile:
    """The same profile with every time multiplied by ``factor`` (emulating a slower device)."""
    if isinstance(factor, bool) or not isinstance(factor, int | float):
        raise SplitError(f"scale factor must be a number, got {factor!r}")
    if not math.isfinite(factor) or factor <= 0:
        raise SplitError(f"scale factor must be finite and > 0, got {factor!r}")
    return replace(
        profile,
        forward_s=tuple(t * factor for t in profile.forward_s),
        backward_s=tuple(t * factor for t in profile.backward_s),
    )


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


def saved_bytes(block: nn.Module, inp: torch.Tensor) -> int:
    """Bytes of the distinct storages ``block`` keeps alive for backward, plus its output.

    Measured with saved-tensor hooks on one forward pass. Not counted: the block's own input
    (the previous block's output, already counted there; for block 0 the data batch), its
    parameters and buffers (in ``param_bytes``). Counted: whatever autograd saves inside the
    block (e.g. the conv output BatchNorm needs, max-pool's int64 indices) and the block's output,
    which stays alive whether the next block, the cut or the loss holds it. Workspace freed
    during backward and the gradients themselves are not included, so this is a lower bound on
    peak training memory per block, not an exact peak.
    """
    excluded = {_storage_key(inp)}
    excluded.update(_storage_key(t) for t in itertools.chain(block.parameters(), block.buffers()))
    saved: dict[tuple[str, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in excluded:
            saved[key] = tensor.untyped_storage().nbytes()
        return tensor

    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    x = inp.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = block(x)
    key = _storage_key(out)
    if key not in excluded:
        saved[key] = out.untyped_storage().nbytes()
    return sum(saved.values())


def _synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for queued kernels, so a timed region covers the work, not just its launch."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def _resolve_device(device: torch.device | str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        # Name the actual GPU ("cuda:0"), so profiles from different GPUs stay distinguishable.
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def profile_blocks(
    spec: ModelSpec,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    wire_itemsize: int = 4,
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
) -> BlockProfile:
    """Time each block of ``spec``'s model at ``batch_size`` on ``device``; record its sizes.

    The model is built under ``seed`` in train mode (BatchNorm uses batch statistics, as in
    training). Each block runs on a detached copy of its real input (from one forward pass over
    a random batch) that requires grad, then backpropagates a random gradient of its output's
    shape, so the two timings are that block's alone. After ``warmup`` untimed passes, each time
    is the median of ``repeats`` passes. The caller's torch RNG state is left untouched.
    """
    for name, value, low in (
        ("batch_size", batch_size, 1),
        ("wire_itemsize", wire_itemsize, 1),
        ("warmup", warmup, 0),
        ("repeats", repeats, 1),
    ):
        if not _is_int(value) or value < low:
            raise SplitError(f"{name} must be an int >= {low}, got {value!r}")
    dev = _resolve_device(device)
    shapes = cut_shapes(spec)
    sync = _synchronizer(dev)

    # All randomness is drawn on the CPU inside a forked RNG: the caller's seed stays unshifted
    # and no CUDA generator is touched. inference_mode(False) and enable_grad: a caller inside
    # no_grad or inference mode must still get real backward timings.
    with (
        torch.random.fork_rng(devices=[]),
        torch.inference_mode(False),
        torch.enable_grad(),
    ):
        torch.manual_seed(seed)
        model = build_model(spec).train()
        param_bytes = tuple(_state_bytes(block) for block in model)
        model.to(dev)
        blocks = list(model)

        x = torch.randn(batch_size, *spec.input_shape)
        inputs: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        with torch.no_grad():
            x = x.to(dev)
            for block, shape in zip(blocks, shapes, strict=True):
                inputs.append(x)
                x = block(x)
                if tuple(x.shape[1:]) != shape:  # guards the size arithmetic below
                    raise SplitError(f"block output {tuple(x.shape)} does not match {shape}")
                grads.append(torch.randn(x.shape).to(dev))

        forward: list[list[float]] = [[] for _ in blocks]
        backward: list[list[float]] = [[] for _ in blocks]
        # Passes outer, blocks inner: a burst of load on a shared machine then hits every block
        # of one pass, which the median discards, instead of all passes of a single block.
        for rep in range(warmup + repeats):
            for i, block in enumerate(blocks):
                # A fresh leaf per pass, so backward stops at the block's input. For block 0 the
                # device never needs that input gradient; its (small) cost is included anyway.
                inp = inputs[i].detach().requires_grad_(True)
                block.zero_grad(set_to_none=True)  # training allocates fresh grads each step too
                sync()
                start = time.perf_counter()
                out = block(inp)
                sync()
                mid = time.perf_counter()
                out.backward(grads[i])
                sync()
                end = time.perf_counter()
                if rep >= warmup:
                    forward[i].append(mid - start)
                    backward[i].append(end - mid)

        memory = tuple(saved_bytes(block, inp) for block, inp in zip(blocks, inputs, strict=True))
        model.zero_grad(set_to_none=True)

    return BlockProfile(
        forward_s=tuple(statistics.median(t) for t in forward),
        backward_s=tuple(statistics.median(t) for t in backward),
        batch_size=batch_size,
        activation_bytes=tuple(batch_size * math.prod(s) * wire_itemsize for s in shapes),
        param_bytes=param_bytes,
        activation_memory_bytes=memory,
        device=str(dev),
        torch_threads=torch.get_num_threads(),
    )
