"""Hypothesis strategies shared by the planner tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from planner import CostTable

# A few repeated values make ties (equal times or energies) common, which is where solvers slip.
_CELL = st.one_of(
    st.sampled_from([0.0, 1.0, 2.0, 3.0, 5.0]),
    st.floats(min_value=0.01, max_value=100.0, allow_nan=False, allow_infinity=False),
)
_BATTERY = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0))

alphas = st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(min_value=0.0, max_value=1.0))


@st.composite
def cost_tables(
    draw: st.DrawFn,
    *,
    max_devices: int = 6,
    max_cuts: int = 8,
    infeasible: bool = True,
    batteries: bool = True,
) -> CostTable:
    """Random tables up to ``max_devices`` x ``max_cuts``, with +inf cells and batteries."""
    n = draw(st.integers(1, max_devices))
    cuts = draw(st.integers(1, max_cuts))
    time = draw(arrays(np.float64, (n, cuts), elements=_CELL))
    energy = draw(arrays(np.float64, (n, cuts), elements=_CELL))
    if infeasible:
        blocked = draw(arrays(np.bool_, (n, cuts)))
        keep = draw(arrays(np.int64, (n,), elements=st.integers(0, cuts - 1)))
        blocked[np.arange(n), keep] = False  # every device keeps at least one feasible cut
        time[blocked] = np.inf
        energy[blocked] = np.inf
    battery = [draw(_BATTERY) if batteries else None for _ in range(n)]
    return CostTable.from_arrays(time, energy, battery_fraction=battery)
