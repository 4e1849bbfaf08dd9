from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from planner import (
    CostTable,
    DeviceProfile,
    ModelProfile,
    PlanningError,
    ServerProfile,
    batches_per_round,
    cost_table,
    memory_needed_bytes,
)
from schemas import PowerFigures

SERVER = ServerProfile(forward_s=(0.1, 0.2), backward_s=(0.3, 0.4))


def _device(**overrides: Any) -> DeviceProfile:
    fields: dict[str, Any] = {
        "device_id": "dev",
        "forward_s": (1.0, 2.0),
        "backward_s": (3.0, 4.0),
        "power": PowerFigures(compute_w=2.0, transmit_w=3.0, receive_w=4.0),
        "samples": 25,
        "uplink_bps": 8000.0,
        "downlink_bps": 16000.0,
        "overhead_s": 0.5,
    }
    fields.update(overrides)
    return DeviceProfile(**fields)


def _model(**overrides: Any) -> ModelProfile:
    fields: dict[str, Any] = {
        "num_blocks": 2,
        "activation_bytes": (1000, 10),
        "param_bytes": (5, 7),
        "activation_memory_bytes": (100, 200),
        "batch_size": 10,
    }
    fields.update(overrides)
    return ModelProfile(**fields)


def test_batches_round_up() -> None:
    assert batches_per_round(25, 10) == 3
    assert batches_per_round(30, 10) == 3
    assert batches_per_round(1, 100) == 1


def test_hand_computed_cells() -> None:
    table = cost_table([_device()], SERVER, _model())
    # 3 batches. Cut 1: D = 1 + 3, C = 0.2 + 0.4, up 8000 bit / 8000 bit/s, down 8000 / 16000,
    # Theta 0.5 -> 3 * 6.6 s; energy 3 * (2 * 4 + 3 * 1 + 4 * 0.5) J.
    # Cut 2 (all on the device): D = 10, no server, no transfer -> 3 * 10.5 s and 3 * 2 * 10 J.
    assert table.time_s[0] == pytest.approx([19.8, 31.5])
    assert table.energy_j[0] == pytest.approx([39.0, 60.0])
    assert table.num_cuts == 2
    assert table.device_ids == ("dev",)


def test_weight_sync_is_priced_once_per_round() -> None:
    plain = cost_table([_device()], SERVER, _model(param_bytes=(500, 1500)))
    synced = cost_table([_device()], SERVER, _model(param_bytes=(500, 1500), sync_weights=True))
    # Cut 1 moves block 1's 4000 bits: up 4000/8000 = 0.5 s, down 4000/16000 = 0.25 s, once per
    # round (not per batch); energy 3 W * 0.5 s + 4 W * 0.25 s. Cut 2 moves 16000 bits: 2 + 1 s.
    assert synced.time_s[0] - plain.time_s[0] == pytest.approx([0.75, 3.0])
    assert synced.energy_j[0] - plain.energy_j[0] == pytest.approx([2.5, 10.0])


def test_a_compressed_weight_wire_scales_the_weights_only() -> None:
    model = _model(param_bytes=(500, 1500), sync_weights=True)
    plain = cost_table([_device()], SERVER, model)
    deltas = cost_table([_device(weight_scale=0.25)], SERVER, model)
    # Int8 deltas: a quarter of the weight sync (0.75 s and 2.5 J at cut 1, 3 s and 10 J at
    # cut 2); the batches cost what they did.
    assert plain.time_s[0] - deltas.time_s[0] == pytest.approx([0.75 * 0.75, 0.75 * 3.0])
    assert plain.energy_j[0] - deltas.energy_j[0] == pytest.approx([0.75 * 2.5, 0.75 * 10.0])
    with pytest.raises(PlanningError, match="weight_scale"):
        _device(weight_scale=0.0)


def test_labels_and_separate_gradient_bytes() -> None:
    table = cost_table([_device()], SERVER, _model(label_bytes=500, gradient_bytes=(2000, 10)))
    # Cut 1: up (1000 + 500) * 8 / 8000 = 1.5 s, down 2000 * 8 / 16000 = 1.0 s.
    assert table.time_s[0, 0] == pytest.approx(3 * (4 + 0.6 + 1.5 + 1.0 + 0.5))
    assert table.energy_j[0, 0] == pytest.approx(3 * (2 * 4 + 3 * 1.5 + 4 * 1.0))
    assert table.time_s[0, 1] == pytest.approx(31.5)  # labels never travel at cut L


def test_a_narrow_wire_scales_activations_and_gradients_only() -> None:
    model = _model(label_bytes=500, param_bytes=(500, 1500), sync_weights=True)
    table = cost_table([_device(wire_scale=0.5)], SERVER, model)
    # Cut 1: up (1000 * 0.5 + 500 labels) * 8 / 8000 = 1.0 s and down 1000 * 0.5 * 8 / 16000 =
    # 0.25 s per batch; the weights, once a round, 0.5 s up and 0.25 s down as on any wire.
    assert table.time_s[0, 0] == pytest.approx(3 * (4 + 0.6 + 1.0 + 0.25 + 0.5) + 0.75)
    assert table.energy_j[0, 0] == pytest.approx(3 * (2 * 4 + 3 * 1.0 + 4 * 0.25) + 2.5)
    with pytest.raises(PlanningError, match="wire_scale"):
        _device(wire_scale=0.0)


def test_memory_constraint() -> None:
    model = _model()
    # param_memory_factor 3: cut 1 needs 3 * 5 + 100, cut 2 needs 3 * 12 + 300 bytes.
    assert memory_needed_bytes(model) == (115, 336)
    table = cost_table([_device(memory_bytes=200)], SERVER, model)
    assert table.feasible.tolist() == [[True, False]]
    assert table.time_s[0, 1] == math.inf
    assert table.energy_j[0, 1] == math.inf
    with pytest.raises(PlanningError) as err:
        cost_table([_device(memory_bytes=100)], SERVER, model)
    assert err.value.field == "dev"


def test_allowed_cuts() -> None:
    table = cost_table([_device(allowed_cuts=frozenset({2}))], SERVER, _model())
    assert table.feasible.tolist() == [[False, True]]
    with pytest.raises(PlanningError) as err:
        cost_table([_device(allowed_cuts=frozenset({3}))], SERVER, _model())
    assert err.value.field == "dev"


def test_shape_mismatches() -> None:
    with pytest.raises(PlanningError) as err:
        cost_table([_device()], ServerProfile((0.1,), (0.1,)), _model())
    assert err.value.field == "server"
    with pytest.raises(PlanningError) as err:
        cost_table([_device(forward_s=(1.0,), backward_s=(1.0,))], SERVER, _model())
    assert err.value.field == "dev"
    with pytest.raises(PlanningError) as err:
        cost_table([], SERVER, _model())
    assert err.value.field == "devices"


def test_table_carries_what_hysteresis_needs() -> None:
    devices = [_device(), _device(device_id="b", battery_fraction=0.5, uplink_bps=1e3)]
    table = cost_table(devices, SERVER, _model())
    assert table.param_bytes == (5, 7)
    assert table.uplink_bps.tolist() == [8000.0, 1000.0]
    assert table.power_rx_w.tolist() == [4.0, 4.0]
    assert table.battery_fraction == (None, 0.5)
    assert table.row("b") == 1
    with pytest.raises(PlanningError):
        table.row("zzz")


def test_table_is_read_only() -> None:
    time = np.array([[1.0, 2.0]])
    table = CostTable.from_arrays(time, [[1.0, 1.0]])
    time[0, 0] = 99.0
    assert table.time_s[0, 0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        table.time_s[0, 0] = 5.0


@pytest.mark.parametrize(
    ("time", "energy", "field"),
    [
        ([[1.0, math.nan]], [[1.0, 1.0]], "time_s"),
        ([[1.0, -1.0]], [[1.0, 1.0]], "time_s"),
        ([[1.0, math.inf]], [[1.0, 1.0]], "energy_j"),
        ([[math.inf]], [[math.inf]], "d0"),
        ([[1.0, 2.0]], [[1.0]], "energy_j"),
    ],
)
def test_table_validation(time: list[list[float]], energy: list[list[float]], field: str) -> None:
    with pytest.raises(PlanningError) as err:
        CostTable.from_arrays(time, energy)
    assert err.value.field == field


def test_duplicate_ids_rejected() -> None:
    with pytest.raises(PlanningError) as err:
        CostTable.from_arrays([[1.0], [1.0]], [[1.0], [1.0]], device_ids=["a", "a"])
    assert err.value.field == "device_ids"


def test_theta_and_split_compute_are_paid_only_at_split_cuts() -> None:
    plain = cost_table([_device()], SERVER, _model())
    learned = cost_table([_device(exchange_s=0.25, split_compute_s=0.125)], SERVER, _model())
    # Cut 1, 3 batches: + 0.375 s each; energy: 2 W * 0.125 s computing, 4 W * 0.25 s receiving
    # (the device accounts its wait for the gradient as receiving). Cut 2 exchanges nothing.
    assert learned.time_s[0] - plain.time_s[0] == pytest.approx([3 * 0.375, 0.0])
    assert learned.energy_j[0] - plain.energy_j[0] == pytest.approx([3 * (0.25 + 1.0), 0.0])
    with pytest.raises(PlanningError, match="exchange_s"):
        _device(exchange_s=-1.0)
