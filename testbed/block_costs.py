"""What each block of a model computes and moves, counted on the model itself (torch).

:func:`block_costs` gives :class:`planner.compute.BlockCosts`, from which the emulated boards
price a model they have no measurements of (``planner.compute``, ``testbed.profiles``). It runs
one sample through the model in eval mode with a forward hook on every leaf module (one without
children) and counts, per block:

- FLOPs, as multiply-accumulates per sample: a convolution's output elements times its kernel
  volume over the groups (a transposed one's input elements times its kernel volume); a dense
  layer's output elements times its input features; pooling's output elements times its window
  (adaptive pooling: its input elements); anything else one per output element (normalisation,
  activations, dropout, a leaf this list does not know).
- moved bytes: what each leaf reads and writes, its tensor inputs and its output, per sample.
  Views (``Flatten``, ``Unflatten``, ``Identity``) move and compute nothing.
- parameter bytes: the block's state dict (weights and buffers), read once per batch.

Work written in a ``forward`` outside any leaf module (a residual block's addition) is not seen;
it is elementwise and small beside the convolutions around it. The counts depend on the
architecture and the input shape only, so they are cached by the architecture's fingerprint and
the input shape, and never depend on this host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.pooling import (
    _AdaptiveAvgPoolNd,
    _AdaptiveMaxPoolNd,
    _AvgPoolNd,
    _LPPoolNd,
    _MaxPoolNd,
)

from planner.compute import BlockCosts
from planner.profiles import ModelProfile
from splitnn.models import ModelSpec, architecture_fingerprint, build_model, cut_shapes
from splitnn.profiling import saved_bytes

__all__ = ["block_costs", "layer_flops", "model_profile"]

FLOAT32_BYTES = 4
LABEL_BYTES = 8  # int64 labels travel up with every split batch
_VIEWS = (nn.Flatten, nn.Unflatten, nn.Identity)
_POOLS = (_MaxPoolNd, _AvgPoolNd, _LPPoolNd)
_ADAPTIVE_POOLS = (_AdaptiveAvgPoolNd, _AdaptiveMaxPoolNd)

# A cache, like splitnn.models' probe: counting builds the model, and an agent asks every round.
_CACHE: dict[tuple[str, tuple[int, ...]], BlockCosts] = {}


def layer_flops(module: nn.Module, inputs: Sequence[torch.Tensor], output: torch.Tensor) -> int:
    """Multiply-accumulates of one call of leaf ``module`` (see the module docstring)."""
    if isinstance(module, _VIEWS):
        return 0
    if isinstance(module, _ConvNd):
        # weight[0]: (in / groups) x kernel for a convolution, (out / groups) x kernel transposed.
        per_element = module.weight[0].numel()
        return (inputs[0].numel() if module.transposed else output.numel()) * per_element
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, _POOLS):
        window: Any = module.kernel_size
        # An int window is that side in every spatial dimension (those after batch, channels).
        if isinstance(window, tuple):
            return output.numel() * math.prod(int(side) for side in window)
        return output.numel() * math.prod([int(window)] * (output.dim() - 2))
    if isinstance(module, _ADAPTIVE_POOLS):
        return inputs[0].numel()
    return output.numel()


def block_costs(spec: ModelSpec) -> BlockCosts:
    """Per block of ``spec``'s model: FLOPs and bytes moved per sample, parameter bytes."""
    key = (architecture_fingerprint(spec), spec.input_shape)
    costs = _CACHE.get(key)
    if costs is None:
        costs = _CACHE[key] = _count(spec)
    return costs


def _count(spec: ModelSpec) -> BlockCosts:
    flops: list[int] = []
    moved: list[int] = []
    tally = [0, 0]  # the current block's FLOPs and bytes

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
        if not isinstance(output, torch.Tensor):
            return  # a leaf giving several tensors: not a layer of a chain of blocks
        tally[0] += layer_flops(module, tensors, output)
        if not isinstance(module, _VIEWS):
            tally[1] += sum(_nbytes(t) for t in (*tensors, output))

    # Building draws from torch's global RNG; fork it so counting never shifts the caller's seed.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        model = build_model(spec).eval()
        handles = [m.register_forward_hook(hook) for m in model.modules() if not any(m.children())]
        try:
            x = torch.zeros(1, *spec.input_shape)
            for block in model:
                tally[:] = [0, 0]
                x = block(x)
                flops.append(tally[0])
                moved.append(tally[1])
        finally:
            for handle in handles:
                handle.remove()
        params = [_state_bytes(block) for block in model]
    return BlockCosts(flops=tuple(flops), moved_bytes=tuple(moved), param_bytes=tuple(params))


def model_profile(spec: ModelSpec, batch_size: int) -> ModelProfile:
    """The planner's sizes of ``spec``'s model at ``batch_size`` (float32, int64 labels): what
    crosses each cut, each block's weights, and what each block keeps alive for backward
    (measured as :func:`splitnn.profiling.profile_blocks` does, at batches 2 and 4, and
    extended in proportion: per-sample tensors scale with the batch, per-channel ones do not)."""
    shapes = cut_shapes(spec)
    small, large = _saved(spec, 2), _saved(spec, 4)
    memory = tuple(
        max(s + (b - s) * (batch_size - 2) // 2, 0) for s, b in zip(small, large, strict=True)
    )
    return ModelProfile(
        num_blocks=len(shapes),
        activation_bytes=tuple(batch_size * math.prod(s) * FLOAT32_BYTES for s in shapes),
        param_bytes=block_costs(spec).param_bytes,
        activation_memory_bytes=memory,
        batch_size=batch_size,
        label_bytes=LABEL_BYTES * batch_size,
    )


def _saved(spec: ModelSpec, batch: int) -> tuple[int, ...]:
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        model = build_model(spec).train()
        x = torch.zeros(batch, *spec.input_shape)
        saved = []
        for block in model:
            saved.append(saved_bytes(block, x))
            with torch.no_grad():
                x = block(x)
    return tuple(saved)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _state_bytes(module: nn.Module) -> int:
    return sum(_nbytes(t) for t in module.state_dict().values())
