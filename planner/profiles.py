"""Planner inputs: what a device, the edge server and the model cost.

All three profiles are frozen, slotted dataclasses validated on construction; a bad value raises
:class:`~planner.errors.PlanningError` naming the field. Times are seconds per batch for ONE block
(not cumulative), sizes are bytes, rates are bits per second, powers are watts.

A network is a chain of ``L`` blocks. A cut ``s`` in ``1..L`` means the device runs blocks
``[0, s)`` and the edge server runs ``[s, L)``; ``s == L`` keeps everything on the device
(federated learning).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from planner.errors import PlanningError
from schemas import PowerFigures

__all__ = [
    "DeviceProfile",
    "ModelProfile",
    "ServerProfile",
    "per_block_from_cumulative",
]


def per_block_from_cumulative(cumulative: Sequence[float]) -> tuple[float, ...]:
    """Turn cumulative per-cut times ``c[s-1] = time of blocks [0, s)`` into per-block times.

    ``block[0] = c[0]`` and ``block[i] = max(c[i], ..., c[0]) - max(c[i-1], ..., c[0])``: each
    difference is taken against the running maximum and so clamped at zero. Why: measured cumulative
    times are noisy and not always monotone (the paper's backward times dip, e.g. the Jetson Nano's
    0.0192 s after one block but 0.0117 s after two), yet a block cannot take negative time.
    Differencing against the running maximum rather than clamping each raw difference keeps the
    noise from accumulating: the rebuilt cumulative times are the running maximum of the
    measurements, never below any of them and never above the largest, instead of drifting upwards
    after every dip.
    """
    values = _finite_non_negative("cumulative", cumulative)
    blocks: list[float] = []
    running_max = 0.0
    for value in values:
        blocks.append(max(value - running_max, 0.0))
        running_max = max(running_max, value)
    return tuple(blocks)


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """One device's costs and resources.

    ``forward_s[i]`` / ``backward_s[i]``: seconds per batch of block ``i`` on this device.
    ``power``: board power while computing, transmitting and receiving (P_c, P_t, P_r).
    ``memory_bytes``: memory available for training (None: unlimited).
    ``allowed_cuts``: cuts this device may use (None: all ``1..L``).
    ``battery_fraction``: charge left in ``[0, 1]`` (None: mains powered).
    ``samples``: training samples on the device per round (W).
    ``uplink_bps`` / ``downlink_bps``: link throughput B and B' in bits per second.
    ``overhead_s``: other per-batch overhead in seconds, paid at every cut (the edge prices its
    measured fixed cost of a round with it, spread over the round's batches).
    ``exchange_s``: Theta, the per-batch round trip beyond the priced transfers and the edge's
    service, paid only at cuts below ``L`` (a cut at ``L`` exchanges nothing per batch). The
    device waits it out receiving, so it costs receive power.
    ``split_compute_s``: device compute a split batch costs beyond its blocks' times (running the
    two halves as separate steps, encoding, a shared CPU's contention), only at cuts below ``L``;
    it costs compute power.
    ``wire_scale``: bytes of activations and gradients on this device's wire per byte of the
    model profile's (float32) counts: 0.5 for float16, 0.25 for int8, 0.125 for int4. Labels
    travel unchanged.
    ``weight_scale``: bytes of the device part's weights on this device's weight wire per byte
    of float32 weights (``sync_weights``): 0.25 for int8 deltas, 0.125 for int4 deltas.
    ``codec_s_per_byte`` / ``edge_codec_s_per_byte``: seconds the device / the edge spend encoding
    and decoding this wire format, per byte of the float32 activations and gradients that cross
    (0 for float32, which travels as it is). The device's share costs compute energy.
    """

    device_id: str
    forward_s: tuple[float, ...]
    backward_s: tuple[float, ...]
    power: PowerFigures
    samples: int
    uplink_bps: float
    downlink_bps: float
    memory_bytes: int | None = None
    allowed_cuts: frozenset[int] | None = None
    battery_fraction: float | None = None
    overhead_s: float = 0.0
    wire_scale: float = 1.0
    codec_s_per_byte: float = 0.0
    edge_codec_s_per_byte: float = 0.0
    weight_scale: float = 1.0
    exchange_s: float = 0.0
    split_compute_s: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, str) or not self.device_id:
            raise PlanningError("device_id", "must be a non-empty string")
        forward = _finite_non_negative("forward_s", self.forward_s)
        backward = _finite_non_negative("backward_s", self.backward_s)
        if not forward:
            raise PlanningError("forward_s", "needs at least one block")
        if len(backward) != len(forward):
            raise PlanningError(
                "backward_s", f"has {len(backward)} blocks but forward_s has {len(forward)}"
            )
        # Lists are accepted for convenience but stored as tuples so the profile stays immutable.
        object.__setattr__(self, "forward_s", forward)
        object.__setattr__(self, "backward_s", backward)
        if not isinstance(self.power, PowerFigures):  # validated (finite, >= 0) when built
            raise PlanningError("power", f"must be a PowerFigures, got {self.power!r}")
        for name in (
            "overhead_s",
            "codec_s_per_byte",
            "edge_codec_s_per_byte",
            "exchange_s",
            "split_compute_s",
        ):
            _check_scalar(name, getattr(self, name), positive=False)
        for name in ("uplink_bps", "downlink_bps", "wire_scale", "weight_scale"):
            _check_scalar(name, getattr(self, name), positive=True)
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise PlanningError("samples", f"must be a positive integer, got {self.samples!r}")
        if self.memory_bytes is not None and (
            isinstance(self.memory_bytes, bool)
            or not isinstance(self.memory_bytes, int)
            or self.memory_bytes < 0
        ):
            raise PlanningError(
                "memory_bytes", f"must be None or an int >= 0, got {self.memory_bytes!r}"
            )
        if self.allowed_cuts is not None:
            cuts = frozenset(self.allowed_cuts)
            if not cuts:
                raise PlanningError("allowed_cuts", "must be None (all cuts) or non-empty")
            bad = sorted(c for c in cuts if isinstance(c, bool) or not isinstance(c, int) or c < 1)
            if bad:
                raise PlanningError("allowed_cuts", f"cuts must be integers >= 1, got {bad!r}")
            object.__setattr__(self, "allowed_cuts", cuts)
        if self.battery_fraction is not None:
            _check_scalar("battery_fraction", self.battery_fraction, positive=False)
            if self.battery_fraction > 1.0:
                raise PlanningError(
                    "battery_fraction", f"must lie in [0, 1], got {self.battery_fraction!r}"
                )

    @property
    def num_blocks(self) -> int:
        return len(self.forward_s)


@dataclass(frozen=True, slots=True)
class ServerProfile:
    """The edge server's seconds per batch for each block (forward and backward)."""

    forward_s: tuple[float, ...]
    backward_s: tuple[float, ...]

    def __post_init__(self) -> None:
        forward = _finite_non_negative("forward_s", self.forward_s)
        backward = _finite_non_negative("backward_s", self.backward_s)
        if not forward:
            raise PlanningError("forward_s", "needs at least one block")
        if len(backward) != len(forward):
            raise PlanningError(
                "backward_s", f"has {len(backward)} blocks but forward_s has {len(forward)}"
            )
        object.__setattr__(self, "forward_s", forward)
        object.__setattr__(self, "backward_s", backward)

    @property
    def num_blocks(self) -> int:
        return len(self.forward_s)


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """Sizes of the model, per batch of ``batch_size`` samples.

    ``activation_bytes[s-1]``: bytes sent up at cut ``s`` (the output of block ``s-1``).
    ``gradient_bytes[s-1]``: bytes sent down at cut ``s``; None means equal to ``activation_bytes``
    (the gradient of an activation has its shape and dtype).
    ``label_bytes``: bytes of labels sent up with every batch when the cut is below ``L``.
    ``param_bytes[i]``: bytes of block ``i``'s weights (memory, and the cost of moving the block).
    ``activation_memory_bytes[i]``: bytes block ``i`` keeps alive for the backward pass.
    ``param_memory_factor``: training memory per weight byte (3: weights, gradients, momentum).
    ``sync_weights``: count the once-per-round transfer of the device part's weights (down at
    the round start, up at its end), which this system's protocol does and the paper's cost model
    leaves out (False: the paper's model exactly).
    Entries for cut ``L`` are kept for completeness but never sent (nothing crosses the link).
    """

    num_blocks: int
    activation_bytes: tuple[int, ...]
    param_bytes: tuple[int, ...]
    activation_memory_bytes: tuple[int, ...]
    batch_size: int
    gradient_bytes: tuple[int, ...] | None = None
    label_bytes: int = 0
    param_memory_factor: float = 3.0
    sync_weights: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int):
            raise PlanningError("num_blocks", f"must be an int, got {self.num_blocks!r}")
        if self.num_blocks < 1:
            raise PlanningError("num_blocks", f"must be >= 1, got {self.num_blocks}")
        for name in ("activation_bytes", "param_bytes", "activation_memory_bytes"):
            object.__setattr__(self, name, self._sizes(name, getattr(self, name)))
        if self.gradient_bytes is not None:
            object.__setattr__(
                self, "gradient_bytes", self._sizes("gradient_bytes", self.gradient_bytes)
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise PlanningError("batch_size", f"must be an int, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise PlanningError("batch_size", f"must be >= 1, got {self.batch_size}")
        if isinstance(self.label_bytes, bool) or not isinstance(self.label_bytes, int):
            raise PlanningError("label_bytes", f"must be an int, got {self.label_bytes!r}")
        if self.label_bytes < 0:
            raise PlanningError("label_bytes", f"must be >= 0, got {self.label_bytes}")
        _check_scalar("param_memory_factor", self.param_memory_factor, positive=False)

    def _sizes(self, name: str, values: Iterable[int]) -> tuple[int, ...]:
        sizes = tuple(values)
        if len(sizes) != self.num_blocks:
            raise PlanningError(name, f"needs {self.num_blocks} entries, got {len(sizes)}")
        for size in sizes:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise PlanningError(name, f"entries must be ints >= 0, got {size!r}")
        return sizes

    @property
    def down_bytes(self) -> tuple[int, ...]:
        """Bytes sent down per batch at each cut (``gradient_bytes`` or ``activation_bytes``)."""
        return self.activation_bytes if self.gradient_bytes is None else self.gradient_bytes


def _finite_non_negative(name: str, values: Iterable[float]) -> tuple[float, ...]:
    try:
        items = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise PlanningError(name, f"must be a sequence of numbers ({exc})") from exc
    for value in items:
        if not math.isfinite(value) or value < 0.0:
            raise PlanningError(name, f"entries must be finite and >= 0, got {value!r}")
    return items


def _check_scalar(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PlanningError(name, f"must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0.0 or (positive and value == 0.0):
        bound = "> 0" if positive else ">= 0"
        raise PlanningError(name, f"must be finite and {bound}, got {value!r}")
