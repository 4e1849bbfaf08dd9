"""Built-in device profiles for emulation, and the compute pacing the agent applies with them.

The profiles are the ARES paper's testbed devices, built from :mod:`planner.paper` (its measured
figures and its assumptions for the unmeasured Nano modes), plus ``host``: no emulation.

Pacing: the agent times each compute phase on the host, asks :class:`ComputePacer` for the emulated
device's time (:meth:`ComputePacer.target_s`), and sleeps the difference (:func:`pad`). For the
profile's reference model (VGG5 at batch 100, as the paper measured) the target comes straight from
the profile's per-block times. For any other model there are no device figures, so the target is
the host's own time for those blocks times the profile's slowdown: the device's total reference
time over the host's, per phase. The host's side of that ratio is ``host_reference``, the host's
measured VGG5 per-block forward and backward times at the profile's reference batch, which the
agent profiles once at start-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from planner.paper import NANO_MODES, NanoMode, jetson_nano, raspberry_pi
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
    ``reference_batch``; both None for no compute emulation. ``power``: the board's power figures
    (None: unknown). ``memory_bytes``: memory available for training (None: unlimited).
    """

    name: str
    description: str
    forward_s: tuple[float, ...] | None
    backward_s: tuple[float, ...] | None
    reference_model: str = "vgg5"
    reference_batch: int = 100
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


def _from_device(name: str, description: str, device: DeviceProfile) -> EmulationProfile:
    # planner.paper does the unit conversions (cumulative to per-block, mode slowdowns); reuse them.
    return EmulationProfile(
        name=name,
        description=description,
        forward_s=device.forward_s,
        backward_s=device.backward_s,
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
    ``host_reference``: the host's measured per-block (forward, backward) times of the profile's
    reference model at its reference batch; needed only to pace other models.
    """

    __slots__ = ("_host_totals", "profile", "time_scale")

    def __init__(
        self,
        profile: EmulationProfile,
        *,
        time_scale: float = 1.0,
        host_reference: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    ) -> None:
        if not math.isfinite(time_scale) or time_scale <= 0:
            raise ValueError(f"time_scale must be positive and finite, got {time_scale!r}")
        self.profile = profile
        self.time_scale = float(time_scale)
        self._host_totals: tuple[float, float] | None = None
        if host_reference is not None:
            forward, backward = host_reference
            totals = (
                sum(_times("host_reference forward", forward)),
                sum(_times("host_reference backward", backward)),
            )
            if min(totals) <= 0:
                raise ValueError("host_reference must have positive forward and backward totals")
            blocks = profile.num_blocks
            if blocks is not None and (len(forward), len(backward)) != (blocks, blocks):
                raise ValueError(
                    f"host_reference must have {blocks} forward and backward blocks "
                    f"(the profile's {profile.reference_model}), got {len(forward)} and "
                    f"{len(backward)}"
                )
            self._host_totals = totals

    def can_pace(self, model: str) -> bool:
        """Whether :meth:`target_s` can give targets for ``model`` (always, if not emulating)."""
        return (
            not self.profile.emulated or self._is_reference(model) or self._host_totals is not None
        )

    def slowdown(self, phase: Phase) -> float:
        """The device's total reference time of ``phase`` over the host's (before time_scale)."""
        device = self.profile.times(phase)
        if device is None:
            return 1.0
        if self._host_totals is None:
            raise PacingError("pacing a model other than the reference needs host_reference")
        host = self._host_totals[0 if _phase(phase) == "forward" else 1]
        return sum(device) / host

    def target_s(
        self,
        phase: Phase,
        first_block: int,
        last_block: int,
        batch_size: int,
        model: str,
        *,
        host_s: float | None = None,
    ) -> float | None:
        """Emulated seconds for blocks ``[first_block, last_block)`` of ``model`` at ``batch_size``.

        None when the profile does not emulate compute. The reference model: the profile's
        per-block times times ``batch_size / reference_batch``. Another model: ``host_s`` (the
        host's time for those blocks at this batch) times :meth:`slowdown`. Both over time_scale.
        """
        times = self.profile.times(phase)
        if first_block < 0 or last_block < first_block:
            raise ValueError(f"blocks [{first_block}, {last_block}) are not a range")
        if isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        if times is None:
            return None
        if self._is_reference(model):
            if last_block > len(times):
                raise ValueError(
                    f"blocks [{first_block}, {last_block}) exceed {self.profile.reference_model}'s "
                    f"{len(times)} blocks"
                )
            batch_factor = batch_size / self.profile.reference_batch
            return sum(times[first_block:last_block]) * batch_factor / self.time_scale
        if host_s is None:
            raise PacingError(f"pacing {model!r} needs host_s, the host's time for those blocks")
        return _non_negative("host_s", host_s) * self.slowdown(phase) / self.time_scale

    def _is_reference(self, model: str) -> bool:
        return model.lower() == self.profile.reference_model.lower()
