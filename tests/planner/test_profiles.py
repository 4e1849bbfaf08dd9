from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner import DeviceProfile, ModelProfile, PlanningError, ServerProfile
from planner import per_block_from_cumulative as per_block
from schemas import PowerFigures


def _device(**overrides: Any) -> DeviceProfile:
    fields: dict[str, Any] = {
        "device_id": "dev",
        "forward_s": (1.0, 2.0),
        "backward_s": (3.0, 4.0),
        "power": PowerFigures(compute_w=2.0, transmit_w=3.0, receive_w=4.0),
        "samples": 25,
        "uplink_bps": 8000.0,
        "downlink_bps": 16000.0,
    }
    fields.update(overrides)
    return DeviceProfile(**fields)


def test_per_block_from_monotone_cumulative() -> None:
    assert per_block([1.0, 3.0, 6.0]) == pytest.approx((1.0, 2.0, 3.0))


def test_per_block_clamps_dips_against_the_running_max() -> None:
    # The Jetson Nano's backward times from the paper dip after the first and fifth cut.
    cumulative = (0.0192, 0.0117, 0.0165, 0.0285, 0.0226, 0.0901, 0.0812)
    blocks = per_block(cumulative)
    assert min(blocks) >= 0.0
    assert blocks == pytest.approx((0.0192, 0.0, 0.0, 0.0093, 0.0, 0.0616, 0.0))
    assert np.cumsum(blocks) == pytest.approx(np.maximum.accumulate(cumulative))


@given(st.lists(st.floats(min_value=0.0, max_value=1e3), min_size=1, max_size=10))
def test_per_block_rebuilds_the_running_max(cumulative: list[float]) -> None:
    blocks = per_block(cumulative)
    assert all(b >= 0.0 for b in blocks)
    assert np.cumsum(blocks) == pytest.approx(np.maximum.accumulate(cumulative), rel=1e-9, abs=1e-9)


def test_per_block_rejects_negative() -> None:
    with pytest.raises(PlanningError):
        per_block([1.0, -2.0])


def test_device_profile_stores_tuples() -> None:
    device = _device(forward_s=[1, 2], backward_s=[3, 4], allowed_cuts={1})
    assert device.forward_s == (1.0, 2.0)
    assert device.allowed_cuts == frozenset({1})
    assert device.num_blocks == 2


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"device_id": ""}, "device_id"),
        ({"backward_s": (1.0,)}, "backward_s"),
        ({"forward_s": ()}, "forward_s"),
        ({"forward_s": (1.0, float("nan"))}, "forward_s"),
        ({"forward_s": (1.0, -1.0)}, "forward_s"),
        ({"power": (2.0, 3.0, 4.0)}, "power"),
        ({"uplink_bps": 0.0}, "uplink_bps"),
        ({"downlink_bps": float("inf")}, "downlink_bps"),
        ({"samples": 0}, "samples"),
        ({"samples": 2.5}, "samples"),
        ({"memory_bytes": -1}, "memory_bytes"),
        ({"allowed_cuts": frozenset()}, "allowed_cuts"),
        ({"allowed_cuts": frozenset({0, 1})}, "allowed_cuts"),
        ({"battery_fraction": 1.5}, "battery_fraction"),
        ({"battery_fraction": -0.1}, "battery_fraction"),
        ({"overhead_s": -0.1}, "overhead_s"),
    ],
)
def test_device_profile_validation_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(PlanningError) as err:
        _device(**overrides)
    assert err.value.field == field
    assert isinstance(err.value, ValueError)


def test_server_profile_validation() -> None:
    assert ServerProfile((0.1, 0.2), (0.3, 0.4)).num_blocks == 2
    with pytest.raises(PlanningError) as err:
        ServerProfile((0.1, 0.2), (0.3,))
    assert err.value.field == "backward_s"


def test_model_profile_defaults_and_validation() -> None:
    model = ModelProfile(2, (1000, 10), (5, 7), (100, 200), batch_size=10)
    assert model.down_bytes == (1000, 10)
    model = ModelProfile(2, (1000, 10), (5, 7), (100, 200), batch_size=10, gradient_bytes=(500, 5))
    assert model.down_bytes == (500, 5)
    with pytest.raises(PlanningError) as err:
        ModelProfile(2, (1000,), (5, 7), (100, 200), batch_size=10)
    assert err.value.field == "activation_bytes"
    with pytest.raises(PlanningError) as err:
        ModelProfile(2, (1000, 10), (5, 7), (100, 200), batch_size=0)
    assert err.value.field == "batch_size"
    with pytest.raises(PlanningError) as err:
        ModelProfile(2, (1000, 10), (5, -7), (100, 200), batch_size=1)
    assert err.value.field == "param_bytes"
    with pytest.raises(PlanningError) as err:
        ModelProfile(0, (), (), (), batch_size=1)
    assert err.value.field == "num_blocks"
