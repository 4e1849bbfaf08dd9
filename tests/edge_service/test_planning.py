"""The edge's split planner: policies, fallbacks, and plans that follow the readings."""

from __future__ import annotations

import pytest

from edge_service.planning import DeviceReadings, PlanDefaults, SplitPlanner
from schemas import ComputeProfile, PowerFigures
from splitnn.profiling import BlockProfile

BLOCKS = 5
# An edge that is 10x faster than the devices, with big activations early in the model.
SERVER = BlockProfile(
    forward_s=(0.001,) * BLOCKS,
    backward_s=(0.002,) * BLOCKS,
    batch_size=32,
    activation_bytes=(4_000_000, 2_000_000, 500_000, 8_000, 1_280),
    param_bytes=(1_000, 20_000, 0, 2_000_000, 2_600),
    activation_memory_bytes=(4_000_000, 2_000_000, 500_000, 8_000, 1_280),
    device="cpu",
    torch_threads=1,
)
DEVICE_TIMES = ComputeProfile(
    model="small_cnn", batch_size=32, forward_s=(0.01,) * BLOCKS, backward_s=(0.02,) * BLOCKS
)
DEFAULTS = PlanDefaults(
    power=PowerFigures(compute_w=5.0, transmit_w=1.5, receive_w=1.5), link_bps=20e6
)


def planner(policy="ares", alpha=0.5, **changes):
    fields = dict(
        policy=policy,
        alpha=alpha,
        model_name="small_cnn",
        server=SERVER,
        defaults=DEFAULTS,
        fixed_split=2,
        fixed_splits={"b": 3},
    )
    return SplitPlanner(**{**fields, **changes})


def readings(**changes):
    return DeviceReadings(**{"samples": 640, "compute": DEVICE_TIMES, **changes})


def test_fl_puts_every_block_on_the_device():
    plan = planner("fl").plan({"a": readings(), "b": readings()})
    assert plan.splits == {"a": BLOCKS, "b": BLOCKS}
    assert plan.devices["a"].predicted_time_s > 0


def test_sl_uses_the_configured_cuts():
    plan = planner("sl").plan({"a": readings(), "b": readings()})
    assert plan.splits == {"a": 2, "b": 3}


def test_ares_follows_each_devices_link():
    plan = planner("ares", alpha=1.0).plan(
        {
            "fast-link": readings(uplink_bps=1e9),
            "slow-link": readings(uplink_bps=1e5),
        }
    )
    # Over a fast link the edge's speed wins: cut early. Over a slow one nothing should travel.
    assert plan.splits["fast-link"] < plan.splits["slow-link"]
    assert plan.splits["slow-link"] == BLOCKS
    assert "measured" in plan.devices["fast-link"].inputs
    assert "link declared" in plan.devices["fast-link"].inputs


def test_ares_is_never_worse_than_fl_or_sl_on_its_objective():
    devices = {
        "a": readings(uplink_bps=1e9),
        "b": readings(uplink_bps=1e5),
        "c": readings(power=PowerFigures(compute_w=10, transmit_w=0.5, receive_w=0.5)),
    }
    for alpha in (0.0, 0.5, 1.0):
        ares = planner("ares", alpha=alpha).plan(devices).objective
        assert ares <= planner("fl", alpha=alpha).plan(devices).objective + 1e-12
        assert ares <= planner("sl", alpha=alpha).plan(devices).objective + 1e-12


def test_static_plans_once_until_the_devices_change():
    static = planner("static", alpha=1.0)
    first = static.plan({"a": readings(uplink_bps=1e9)})
    # The link collapses, but a static plan does not move...
    assert static.plan({"a": readings(uplink_bps=1e4)}).splits == first.splits
    # ...while ares moves at the next round.
    ares = planner("ares", alpha=1.0)
    ares.plan({"a": readings(uplink_bps=1e9)})
    assert ares.plan({"a": readings(uplink_bps=1e4)}).splits["a"] == BLOCKS
    # A new device makes the static policy plan again.
    replanned = static.plan({"a": readings(uplink_bps=1e4), "b": readings(uplink_bps=1e9)})
    assert replanned.splits["a"] == BLOCKS


def test_a_change_of_cut_is_not_charged_for_weights_that_travel_every_round_anyway():
    ares = planner("ares", alpha=0.5)
    ares.plan({"a": readings(uplink_bps=1e9), "b": readings(uplink_bps=1e9)})
    # Block 4's 2 MB now cross a 10 Mbit/s link every round: they would anyway, at any cut
    # past it, and the cost table prices that; the move adds nothing, so only the noise
    # margin stands between the device and the candidate's cut.
    moved = ares.plan({"a": readings(uplink_bps=1e7), "b": readings(uplink_bps=1e9)})
    fresh = planner("ares", alpha=0.5).plan(
        {"a": readings(uplink_bps=1e7), "b": readings(uplink_bps=1e9)}
    )
    assert moved.splits == fresh.splits
    assert moved.splits["a"] == 4
    assert "move cost 0 " in moved.devices["a"].reason


def test_missing_readings_fall_back_and_say_so():
    plan = planner().plan({"quiet": DeviceReadings(samples=100)})
    assert plan.devices["quiet"].inputs == (
        "compute assumed (edge speed), power assumed, link assumed, Theta assumed 0, "
        "edge queueing assumed none"
    )
    other_model = ComputeProfile(
        model="vgg5", batch_size=32, forward_s=(0.1,) * 7, backward_s=(0.1,) * 7
    )
    plan = planner().plan({"x": readings(compute=other_model)})
    assert plan.devices["x"].inputs.startswith("compute assumed")


def test_a_device_on_a_flat_battery_sits_out_or_saves_energy():
    plan = planner("ares").plan({"a": readings(), "low": readings(battery_pct=5.0)})
    assert "low" in plan.devices or "low" in plan.sitting_out


def test_no_devices_is_an_error():
    with pytest.raises(ValueError, match="without devices"):
        planner().plan({})


def test_float16_on_the_wire_halves_activations_and_gradients_but_not_the_weights():
    sl = planner("sl")  # cut 2 for device a
    f32 = sl.plan({"a": readings(uplink_bps=1e6)}).devices["a"]
    f16 = sl.plan({"a": readings(uplink_bps=1e6, wire_itemsize=2)}).devices["a"]
    compute_only = planner("sl").plan({"a": readings(uplink_bps=1e15)}).devices["a"]
    transfer32 = f32.predicted_time_s - compute_only.predicted_time_s
    transfer16 = f16.predicted_time_s - compute_only.predicted_time_s
    # 20 batches of 2 MB of activations up and 2 MB of gradients down at 1 Mbit/s, halved...
    assert transfer32 - transfer16 == pytest.approx(20 * 8 * (2e6 + 2e6) / 2 / 1e6)
    # ...while the part's weights (21 kB each way) and the labels cost what they did.
    weights_and_labels = 2 * 8 * 21_000 / 1e6 + 20 * 8 * 8 * 32 / 1e6
    assert transfer16 - transfer32 / 2 == pytest.approx(weights_and_labels / 2, abs=1e-6)


def test_a_device_only_gets_cuts_it_allows():
    plan = planner("ares").plan({"a": readings(allowed_cuts=(2, 3)), "b": readings()})
    assert plan.splits["a"] in (2, 3)


def test_a_compressed_weight_wire_is_priced_with_its_scale():
    # fl at 1 Mbit/s: 2.02 MB of weights down and up each round, or a quarter of it as deltas.
    slow = {"uplink_bps": 1e6, "downlink_bps": 1e6}
    full = planner("fl").plan({"a": readings(**slow)}).devices["a"]
    deltas = planner("fl").plan({"a": readings(**slow, weight_scale=0.25)}).devices["a"]
    sync_s = 2 * 8 * sum(SERVER.param_bytes) / 1e6
    assert full.predicted_time_s - deltas.predicted_time_s == pytest.approx(0.75 * sync_s)
