"""Built-in device profiles for emulation, and the compute pacing the agent applies with them.

The profiles are the ARES paper's testbed devices, built from :mod:`planner.paper` (its measured
figures and its assumptions for the unmeasured Nano modes), plus ``host``: no emulation.

Pacing: the agent times each compute phase on the host, asks :class:`ComputePacer` for the emulated
device's time (:meth:`ComputePacer.target_s`), and sleeps the difference (:func:`pad`). For the
profile's reference model (VGG5 at batch 100, as the paper measured) the target comes straight from
the profile's per-block times, in proportion to the batch. For any other model the target is what
its blocks compute and move (their :class:`~planner.compute.BlockCosts`, counted by
``testbed.block_costs``) priced at the rates fitted to the board's reference times
(:class:`planner.compute.BoardCompute`): the same on every host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from planner.compute import BlockCosts, BoardCompute
from planner.paper import NANO_MODES, VGG5_COSTS, NanoMode, jetson_nano, raspberry_pi
from planner.profiles import DeviceProfile
from schemas import PowerFigures
from schemas.errors import AresError

__all__ = [
    "PROFILES",
    "PROFILE_NAMES",
    "ComputePacer",
    "EmulationProfile",
    "PaceResult",
    "PacingError",
    "Phase",
    "get_profile",
    "pad",
]

Phase = Literal["forward", "backward"]


def _phase(phase: str) -> Phase:
    if phase == "forward":
        return "forward"
    if phase == "backward":
        return "backward"
    raise ValueError(f"phase must be 'forward' or 'backward', got {phase!r}")


def _times(name: str, values: tuple[float, ...]) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) and v >= 0 for v in out):
        raise ValueError(f"{name} must be finite and non-negative, got {values!r}")
    return out


def _non_negative(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and non-negative, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmulationProfile:
    """A device to emulate: per-block times of the reference model, power and memory.

    ``forward_s[i]`` / ``backward_s[i]``: seconds for block ``i`` of ``reference_model`` at
    ``reference_batch``; both None for no compute emulation. ``reference_costs``: what the
    reference model's blocks compute and move, to fit the rates that pace other models to
    (None: only the reference model can be paced). ``power``: the board's power figures
    (None: unknown). ``memory_bytes``: memory available for training (None: unlimited).
    """

    name: str
    description: str
    forward_s: tuple[float, ...] | None
    backward_s: tuple[float, ...] | None
    reference_model: str = "vgg5"
    reference_batch: int = 100
    reference_costs: BlockCosts | None = None
    power: PowerFigures | None = None
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must be a non-empty string")
        if (self.forward_s is None) != (self.backward_s is None):
            raise ValueError("forward_s and backward_s must both be given or both be None")
        if self.forward_s is not None and self.backward_s is not None:
            forward = _times("forward_s", self.forward_s)
            backward = _times("backward_s", self.backward_s)
            if not forward:
                raise ValueError("forward_s needs at least one block")
            if len(backward) != len(forward):
                raise ValueError(
                    f"backward_s has {len(backward)} blocks but forward_s has {len(forward)}"
                )
            object.__setattr__(self, "forward_s", forward)
            object.__setattr__(self, "backward_s", backward)
        if isinstance(self.reference_batch, bool) or self.reference_batch <= 0:
            raise ValueError(
                f"reference_batch must be a positive int, got {self.reference_batch!r}"
            )
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise ValueError(f"memory_bytes must be positive, got {self.memory_bytes!r}")
        costs = self.reference_costs
        if costs is not None and costs.num_blocks != self.num_blocks:
            raise ValueError(
                f"reference_costs has {costs.num_blocks} blocks but forward_s has {self.num_blocks}"
            )

    @property
    def emulated(self) -> bool:
        """Whether compute is paced to this profile (False for ``host``)."""
        return self.forward_s is not None

    @property
    def num_blocks(self) -> int | None:
        return None if self.forward_s is None else len(self.forward_s)

    def times(self, phase: Phase) -> tuple[float, ...] | None:
        """Per-block times of ``phase`` for the reference model at the reference batch."""
        return self.forward_s if _phase(phase) == "forward" else self.backward_s

    def compute(self) -> BoardCompute | None:
        """The board's times and the rates fitted to them (None: not emulated, or no
        ``reference_costs`` to fit to)."""
        if self.forward_s is None or self.backward_s is None or self.reference_costs is None:
            return None
        return BoardCompute(
            self.forward_s, self.backward_s, self.reference_costs, self.reference_batch
        )


def _from_device(name: str, description: str, device: DeviceProfile) -> EmulationProfile:
    # planner.paper does the unit conversions (cumulative to per-block, mode slowdowns); reuse them.
    return EmulationProfile(
        name=name,
        description=description,
        forward_s=device.forward_s,
        backward_s=device.backward_s,
        reference_costs=VGG5_COSTS,
        power=device.power,
        memory_bytes=device.memory_bytes,
    )


def _build_profiles() -> tuple[EmulationProfile, ...]:
    nano: dict[NanoMode, str] = {
        "maxn": "Jetson Nano in MAXN mode (measured in the ARES paper)",
        "5w": "Jetson Nano in 5W mode (MAXN times scaled by the GPU clock cap, an assumption)",
        "5w-1core": "Jetson Nano in 5W mode on one CPU core (5W times x4, an assumption)",
        "5w-3core": "Jetson Nano in 5W mode on three CPU cores (5W times x4/3, an assumption)",
    }
    return (
        EmulationProfile(
            name="host",
            description="This machine as it is: no compute emulation",
            forward_s=None,
            backward_s=None,
        ),
        _from_device(
            "raspberry-pi-3b+",
            "Raspberry Pi 3B+ (measured in the ARES paper)",
            raspberry_pi("raspberry-pi-3b+"),
        ),
        *(
            _from_device(f"jetson-nano-{mode}", nano[mode], jetson_nano("nano", mode))
            for mode in NANO_MODES
        ),
    )


PROFILES: tuple[EmulationProfile, ...] = _build_profiles()
PROFILE_NAMES: tuple[str, ...] = tuple(profile.name for profile in PROFILES)


def get_profile(name: str) -> EmulationProfile:
    """The built-in profile called ``name``; ValueError listing the names otherwise."""
    for profile in PROFILES:
        if profile.name == name:
            return profile
    raise ValueError(f"unknown device profile {name!r}; known: {', '.join(PROFILE_NAMES)}")


# --- pacing -------------------------------------------------------------------------------------


class PacingError(AresError, ValueError):
    """A pacing target that cannot be computed from what the pacer was given."""


@dataclass(frozen=True, slots=True)
class PaceResult:
    """``sleep_s``: how long to wait so the phase takes the target time. ``behind_s``: how far
    the host overran the target (it cannot keep up with the emulated device); at most one of the
    two is non-zero."""

    sleep_s: float
    behind_s: float


def pad(actual_s: float, target_s: float | None) -> PaceResult:
    """Pad a phase that took ``actual_s`` on the host to ``target_s`` (None: no emulation)."""
    actual_s = _non_negative("actual_s", actual_s)
    if target_s is None:
        return PaceResult(0.0, 0.0)
    target_s = _non_negative("target_s", target_s)
    return PaceResult(sleep_s=max(target_s - actual_s, 0.0), behind_s=max(actual_s - target_s, 0.0))


class ComputePacer:
    """Emulated compute times for one device profile.

    ``time_scale`` speeds the whole emulation up uniformly (2.0: everything takes half as long).
    A model is the profile's reference model when its costs are the reference's (known by its
    name where either is missing); any other model needs its :class:`BlockCosts`.
    """

    __slots__ = ("_compute", "profile", "time_scale")

    def __init__(self, profile: EmulationProfile, *, time_scale: float = 1.0) -> None:
        if not math.isfinite(time_scale) or time_scale <= 0:
            raise ValueError(f"time_scale must be positive and finite, got {time_scale!r}")
        self.profile = profile
        self.time_scale = float(time_scale)
        self._compute = profile.compute()  # the fit, once

    def block_times(
        self, phase: Phase, batch_size: int, model: str, costs: BlockCosts | None = None
    ) -> tuple[float, ...] | None:
        """Emulated seconds of every block of ``model`` (with ``costs``) in ``phase`` at
        ``batch_size``, over time_scale; None when the profile does not emulate compute.

        The reference model: the profile's per-block times times ``batch_size /
        reference_batch``. Another model: its costs at the board's fitted rates.
        """
        times = self.profile.times(phase)
        if isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        if times is None:
            return None
        if self._is_reference(model, costs):
            batch_factor = batch_size / self.profile.reference_batch
            return tuple(t * batch_factor / self.time_scale for t in times)
        if costs is None:
            raise PacingError(f"pacing {model!r} needs its block costs (testbed.block_costs)")
        if self._compute is None:
            raise PacingError(
                f"profile {self.profile.name!r} has no reference costs to price {model!r} with"
            )
        forward, backward = self._compute.block_times(costs, batch_size)
        chosen = forward if _phase(phase) == "forward" else backward
        return tuple(t / self.time_scale for t in chosen)

    def target_s(
        self,
        phase: Phase,
        first_block: int,
        last_block: int,
        batch_size: int,
        model: str,
        *,
        costs: BlockCosts | None = None,
    ) -> float | None:
        """Emulated seconds for blocks ``[first_block, last_block)`` of ``model`` at
        ``batch_size`` (see :meth:`block_times`); None when the profile does not emulate."""
        if first_block < 0 or last_block < first_block:
            raise ValueError(f"blocks [{first_block}, {last_block}) are not a range")
        times = self.block_times(phase, batch_size, model, costs)
        if times is None:
            return None
        if last_block > len(times):
            raise ValueError(
                f"blocks [{first_block}, {last_block}) exceed {model}'s {len(times)} blocks"
            )
        return sum(times[first_block:last_block])

    def _is_reference(self, model: str, costs: BlockCosts | None) -> bool:
        # By its costs where both are known: VGG5 on other inputs is not what was measured.
        if costs is not None and self.profile.reference_costs is not None:
            return costs == self.profile.reference_costs
        return model.lower() == self.profile.reference_model.lower()
