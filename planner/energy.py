"""A device's energy: the one formula the planner, the edge's accounting and the emulated
battery all use (the paper's E = P_c * D + P_t * V/B + P_r * V'/B', per phase durations)."""

from __future__ import annotations

from typing import overload

import numpy as np
from numpy.typing import NDArray

from schemas import PowerFigures

Durations = NDArray[np.float64] | float


@overload
def device_energy_j(  # type: ignore[overload-overlap]  # floats in, a float out
    power: PowerFigures, compute_s: float, transmit_s: float, receive_s: float
) -> float: ...
@overload
def device_energy_j(
    power: PowerFigures, compute_s: Durations, transmit_s: Durations, receive_s: Durations
) -> NDArray[np.float64]: ...
def device_energy_j(
    power: PowerFigures, compute_s: Durations, transmit_s: Durations, receive_s: Durations
) -> Durations:
    """Joules for ``compute_s`` computing, ``transmit_s`` sending and ``receive_s`` receiving
    (floats, or numpy arrays of per-cut durations)."""
    return power.compute_w * compute_s + power.transmit_w * transmit_s + power.receive_w * receive_s
