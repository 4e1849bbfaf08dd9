"""Cutting a model in two: the device runs blocks ``[0, cut)``, the server ``[cut, L)``.

Parts keep the global block index as child name, so a part's state-dict keys are exactly the
full model's keys for its blocks and states can be split and merged by key alone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from numbers import Integral
from typing import overload

from torch import Tensor, nn

from splitnn.errors import SplitError
from splitnn.models import ModelSpec, build_blocks, num_blocks, state_keys


def validate_cut(spec: ModelSpec, cut: int) -> None:
    """A cut is an int in 1..L; 0 would send raw data off the device, L means plain FL."""
    total = num_blocks(spec)
    # Integral admits numpy ints; bool is Integral too but never a meaningful cut.
    if not isinstance(cut, Integral) or isinstance(cut, bool) or not 1 <= cut <= total:
        raise SplitError(f"cut for {spec.name} must be an int in 1..{total}, got {cut!r}")


def device_blocks(cut: int) -> range:
    """Indices of the blocks the device runs."""
    return range(0, cut)


def server_blocks(cut: int, total: int) -> range:
    """Indices of the blocks the server runs (empty when ``cut == total``)."""
    return range(cut, total)


def build_part(spec: ModelSpec, start: int, stop: int) -> nn.Sequential:
    """Blocks ``[start, stop)`` named by global index; an empty part is the identity.

    All blocks are built and the rest dropped, so under the same torch seed a part's initial
    weights equal those of the matching blocks of ``build_model``.
    """
    total = num_blocks(spec)
    if not 0 <= start <= stop <= total:
        raise SplitError(f"block range [{start}, {stop}) is not within [0, {total}]")
    blocks = build_blocks(spec)
    return nn.Sequential(OrderedDict((str(i), blocks[i]) for i in range(start, stop)))


def block_index(key: str) -> int:
    """The block a state-dict key belongs to (its leading path component)."""
    head = key.split(".", 1)[0]
    if not head.isdigit():
        raise SplitError(f"state key {key!r} does not start with a block index")
    return int(head)


def _check_keys(actual: Mapping[str, Tensor], expected: set[str], what: str) -> None:
    missing, unexpected = expected - set(actual), set(actual) - expected
    if missing or unexpected:
        raise SplitError(f"{what}: missing keys {sorted(missing)}, unexpected {sorted(unexpected)}")


def split_state(
    state: Mapping[str, Tensor], spec: ModelSpec, cut: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(device_state, server_state)`` of a full-model state; tensors are shared, not copied."""
    validate_cut(spec, cut)
    _check_keys(state, set(state_keys(spec)), f"state is not a full {spec.name} state")
    device = {k: v for k, v in state.items() if block_index(k) < cut}
    server = {k: v for k, v in state.items() if block_index(k) >= cut}
    return device, server


@overload
def merge_states(spec: ModelSpec, /, *parts: Mapping[str, Tensor]) -> dict[str, Tensor]: ...
@overload
def merge_states(*parts: Mapping[str, Tensor]) -> dict[str, Tensor]: ...
def merge_states(*args: ModelSpec | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Union of part states; overlapping keys are an error. When the first argument is a spec,
    so is any key missing from or foreign to the full model, and the keys come in its order."""
    spec = args[0] if args and isinstance(args[0], ModelSpec) else None
    merged: dict[str, Tensor] = {}
    for part in args[1:] if spec is not None else args:
        if isinstance(part, ModelSpec):
            raise SplitError("only the first argument of merge_states may be a ModelSpec")
        overlap = merged.keys() & part.keys()
        if overlap:
            raise SplitError(f"parts overlap on keys {sorted(overlap)}")
        merged.update(part)
    if spec is None:
        return merged
    _check_keys(merged, set(state_keys(spec)), f"merged parts are not a full {spec.name} state")
    return {key: merged[key] for key in state_keys(spec)}  # the full model's key order


def load_part_state(part: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Strict ``load_state_dict`` whose failures are SplitErrors naming the offending keys."""
    own = part.state_dict()
    _check_keys(state, set(own), "state does not fit the part")
    mismatched = [
        f"{k}: expected {tuple(v.shape)}, got {tuple(state[k].shape)}"
        for k, v in own.items()
        if v.shape != state[k].shape
    ]
    if mismatched:
        raise SplitError(f"shape mismatch: {'; '.join(mismatched)}")
    part.load_state_dict(state, strict=True)
