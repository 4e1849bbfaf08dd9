"""Serving inputs: what a device, the edge and the model cost per request.

Times are seconds per SAMPLE for one block (the runtime divides a compute profile's per-batch
``forward_s`` by its batch size), sizes are bytes per sample, rates bits per second, powers watts.
A cut ``c`` in ``0..L`` gives the device blocks ``1..c`` (and its exits at positions ``<= c``) and
the edge blocks ``c+1..L``: cut 0 sends the raw input, cut L answers everything on the device.
Validation as in :mod:`planner.profiles`: a bad value raises ``PlanningError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from planner.errors import PlanningError
from planner.inference.points import ObservedExits
from planner.profiles import _check_scalar, _finite_non_negative
from schemas import PowerFigures

__all__ = ["DEFAULT_OVERHEAD_S", "ServingDevice", "ServingEdge", "ServingModel"]

DEFAULT_OVERHEAD_S = 0.005  # Theta: one MQTT publish and its routing through the broker


@dataclass(frozen=True, slots=True)
class ServingDevice:
    """One device's costs and readings for serving.

    ``forward_s[i]``: seconds per sample of block ``i + 1`` on this device.
    ``exit_head_s[p]``: seconds per sample of the exit head at position ``p`` (absent: 0).
    ``power``: P_c, P_t, P_r; ``uplink_bps`` / ``downlink_bps``: B and B'.
    ``battery_fraction``: charge in ``[0, 1]``, None for mains power.
    ``overhead_s``: Theta, the per-request network overhead paid whenever the edge is asked.
    ``wire_scale``: wire bytes per byte of the model's (float32) tensor sizes (0.5: float16).
    ``allowed_cuts``: cuts this device may take (None: ``0..L``); ``memory_bytes``: memory for
    serving (None: unlimited, see :meth:`ServingModel.memory_needed_bytes`).
    ``observed``: the early-exit rate it measured at its current setting (corrects the table).
    """

    device_id: str
    forward_s: tuple[float, ...]
    power: PowerFigures
    uplink_bps: float
    downlink_bps: float
    exit_head_s: Mapping[int, float] = field(default_factory=dict)
    battery_fraction: float | None = None
    overhead_s: float = DEFAULT_OVERHEAD_S
    wire_scale: float = 1.0
    allowed_cuts: frozenset[int] | None = None
    memory_bytes: int | None = None
    observed: ObservedExits | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, str) or not self.device_id:
            raise PlanningError("device_id", "must be a non-empty string")
        forward = _finite_non_negative("forward_s", self.forward_s)
        if not forward:
            raise PlanningError("forward_s", "needs at least one block")
        object.__setattr__(self, "forward_s", forward)
        if not isinstance(self.power, PowerFigures):
            raise PlanningError("power", f"must be a PowerFigures, got {self.power!r}")
        for name in ("uplink_bps", "downlink_bps", "wire_scale"):
            _check_scalar(name, getattr(self, name), positive=True)
        _check_scalar("overhead_s", self.overhead_s, positive=False)
        heads: dict[int, float] = {}
        for position, seconds in dict(self.exit_head_s).items():
            if isinstance(position, bool) or not 1 <= position <= len(forward):
                raise PlanningError("exit_head_s", f"position {position!r} is outside 1..L")
            _check_scalar(f"exit_head_s[{position}]", seconds, positive=False)
            heads[position] = float(seconds)
        object.__setattr__(self, "exit_head_s", heads)
        if self.battery_fraction is not None:
            _check_scalar("battery_fraction", self.battery_fraction, positive=False)
            if self.battery_fraction > 1.0:
                message = f"must lie in [0, 1], got {self.battery_fraction!r}"
                raise PlanningError("battery_fraction", message)
        if self.allowed_cuts is not None:
            cuts = frozenset(self.allowed_cuts)
            bad = sorted(c for c in cuts if isinstance(c, bool) or not isinstance(c, int) or c < 0)
            if not cuts or bad:
                raise PlanningError("allowed_cuts", f"must be non-empty ints >= 0, got {bad!r}")
            object.__setattr__(self, "allowed_cuts", cuts)
        if self.memory_bytes is not None and (
            isinstance(self.memory_bytes, bool)
            or not isinstance(self.memory_bytes, int)
            or self.memory_bytes < 0
        ):
            message = f"must be None or an int >= 0, got {self.memory_bytes!r}"
            raise PlanningError("memory_bytes", message)
        if self.observed is not None and not isinstance(self.observed, ObservedExits):
            raise PlanningError("observed", f"must be an ObservedExits, got {self.observed!r}")

    @property
    def num_blocks(self) -> int:
        return len(self.forward_s)


@dataclass(frozen=True, slots=True)
class ServingEdge:
    """The edge's seconds per sample for each block (forward only: serving has no backward)."""

    forward_s: tuple[float, ...]

    def __post_init__(self) -> None:
        forward = _finite_non_negative("forward_s", self.forward_s)
        if not forward:
            raise PlanningError("forward_s", "needs at least one block")
        object.__setattr__(self, "forward_s", forward)

    @property
    def num_blocks(self) -> int:
        return len(self.forward_s)


@dataclass(frozen=True, slots=True)
class ServingModel:
    """Sizes per sample: ``input_bytes`` (the raw input, sent at cut 0), ``activation_bytes[c-1]``
    (the output of block c, sent at cut c < L), ``answer_bytes`` (the edge's answer, sent down).
    ``param_bytes[i]`` (block i + 1's weights) and ``exit_param_bytes[p]`` (the exit head at p)
    price memory; without ``param_bytes`` memory is not checked."""

    input_bytes: int
    activation_bytes: tuple[int, ...]
    answer_bytes: int = 64
    param_bytes: tuple[int, ...] | None = None
    exit_param_bytes: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sizes = _sizes("activation_bytes", self.activation_bytes)
        if not sizes:
            raise PlanningError("activation_bytes", "needs at least one block")
        object.__setattr__(self, "activation_bytes", sizes)
        for name in ("input_bytes", "answer_bytes"):
            _sizes(name, (getattr(self, name),))
        if self.param_bytes is not None:
            params = _sizes("param_bytes", self.param_bytes)
            if len(params) != len(sizes):
                raise PlanningError("param_bytes", f"needs {len(sizes)} entries, got {len(params)}")
            object.__setattr__(self, "param_bytes", params)
        heads = dict(self.exit_param_bytes)
        _sizes("exit_param_bytes", tuple(heads.values()))
        object.__setattr__(self, "exit_param_bytes", heads)

    @property
    def num_blocks(self) -> int:
        return len(self.activation_bytes)

    def sent_bytes(self, cut: int) -> int:
        """Bytes (float32 counts) sent up when the edge is asked at ``cut``; 0 at cut L."""
        if cut >= self.num_blocks:
            return 0
        return self.input_bytes if cut == 0 else self.activation_bytes[cut - 1]

    def memory_needed_bytes(self, cut: int, exits: bool) -> int:
        """Serving memory on a device at ``cut``: the weights of blocks ``1..cut`` (and of the
        exit heads at positions ``<= cut`` when exits are on) plus twice the largest of the input
        and the block outputs it holds (a block's input and output are alive together; one
        request at a time). 0 without ``param_bytes``."""
        if self.param_bytes is None:
            return 0
        weights = sum(self.param_bytes[:cut])
        if exits:
            weights += sum(b for p, b in self.exit_param_bytes.items() if p <= cut)
        largest = max((self.input_bytes, *self.activation_bytes[:cut]))
        return weights + 2 * largest


def _sizes(name: str, values: tuple[int, ...]) -> tuple[int, ...]:
    items = tuple(values)
    for size in items:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise PlanningError(name, f"entries must be ints >= 0, got {size!r}")
    return items
