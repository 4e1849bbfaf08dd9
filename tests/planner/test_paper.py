from __future__ import annotations

import numpy as np
import pytest

from planner import cost_table, plan_for_cuts, solve
from planner.paper import (
    NANO_MAXN_BACKWARD_CUMULATIVE,
    PI_FORWARD_CUMULATIVE,
    edge_server,
    jetson_nano,
    paper_testbed,
    raspberry_pi,
    vgg5_model,
)


def test_vgg5_sizes_are_float32() -> None:
    model = vgg5_model()
    assert model.num_blocks == 7
    assert model.batch_size == 100
    # Output elements per sample x 100 samples x 4 bytes, never 1 byte per float.
    assert model.activation_bytes == (
        13_107_200,
        3_276_800,
        6_553_600,
        1_638_400,
        1_638_400,
        51_200,
        4_000,
    )
    assert model.down_bytes == model.activation_bytes
    assert model.label_bytes == 800
    # 582,346 trainable parameters plus 320 BatchNorm running statistics, float32.
    assert sum(model.param_bytes) == 4 * (582_346 + 320)
    assert model.param_bytes[1] == model.param_bytes[3] == 0  # pooling has no weights


def test_per_block_times_rebuild_the_measurements() -> None:
    pi = raspberry_pi("pi")
    assert np.cumsum(pi.forward_s) == pytest.approx(PI_FORWARD_CUMULATIVE)
    nano = jetson_nano("n")
    assert np.cumsum(nano.backward_s) == pytest.approx(
        np.maximum.accumulate(NANO_MAXN_BACKWARD_CUMULATIVE)
    )
    assert sum(edge_server().forward_s) == pytest.approx(sum(nano.forward_s) / 20)


def test_nano_modes_are_ordered() -> None:
    total = {
        mode: sum(jetson_nano("n", mode).forward_s)
        for mode in ("maxn", "5w", "5w-3core", "5w-1core")
    }
    assert total["maxn"] < total["5w"] < total["5w-3core"] < total["5w-1core"]


def test_testbed_shape() -> None:
    devices, server, model = paper_testbed()
    assert [d.device_id for d in devices] == [
        "pi3b",
        "nano-maxn",
        "nano-5w",
        "nano-5w-1core",
        "nano-5w-3core",
    ]
    assert all(d.uplink_bps == 20e6 and d.downlink_bps == 20e6 for d in devices)
    assert all(d.samples == 5000 for d in devices)
    assert server.num_blocks == model.num_blocks == 7
    devices, _, _ = paper_testbed(40.0, 2000, downlink_mbps=100.0)
    assert devices[0].uplink_bps == 40e6
    assert devices[0].downlink_bps == 100e6
    assert devices[0].samples == 2000


@pytest.mark.parametrize("uplink_mbps", [20.0, 40.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_solution_beats_federated_and_classic_split(uplink_mbps: float, alpha: float) -> None:
    table = cost_table(*paper_testbed(uplink_mbps))
    plan = solve(table, alpha)
    federated = plan_for_cuts(table, alpha, table.num_cuts)
    assert plan.objective <= federated.objective
    for cut in range(1, table.num_cuts + 1):
        assert plan.objective <= plan_for_cuts(table, alpha, cut).objective
