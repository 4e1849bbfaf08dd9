"""The overhead learner: Theta, a split batch's extra compute, a round's fixed cost and the edge's
queueing, learned from measured rounds, and how they reach the plan."""

from __future__ import annotations

from typing import Any

import pytest

from edge_service.overhead import OverheadLearner, RoundObservation
from edge_service.overhead_feed import round_observations, with_overheads
from edge_service.planning import DeviceReadings, PlanDefaults, SplitPlanner
from edge_service.registry import DeviceRegistry
from edge_service.rounds import DeviceResult
from schemas import ComputeProfile, Hello, PowerFigures, Telemetry
from splitnn.profiling import BlockProfile

MS = 1e-3


def split_round(device_id: str = "a", **changes: Any) -> RoundObservation:
    """10 batches at a split cut. Per batch: compute priced 2 ms, measured 5 ms (3 ms more);
    transfer priced 1 ms, the edge's service 4 ms (its profile alone: 2 ms), round trip 9 ms
    (Theta 4 ms). The round: 20 ms of weights, 50 ms busy, 90 ms of round trips, 30 ms more."""
    fields: dict[str, Any] = dict(
        device_id=device_id,
        split=True,
        batches=10,
        round_s=0.190,
        busy_s=0.050,
        weights_s=0.020,
        compute_s=2 * MS,
        transfer_s=1 * MS,
        edge_compute_s=2 * MS,
        service_s=4 * MS,
        round_trip_s=9 * MS,
    )
    return RoundObservation(**{**fields, **changes})


def fl_round(device_id: str = "a", **changes: Any) -> RoundObservation:
    """A whole-model round: 80 ms busy, 20 ms of weights, 25 ms more."""
    fields: dict[str, Any] = dict(
        device_id=device_id,
        split=False,
        batches=10,
        round_s=0.125,
        busy_s=0.080,
        weights_s=0.020,
        compute_s=8 * MS,
    )
    return RoundObservation(**{**fields, **changes})


def test_a_split_round_gives_theta_split_compute_round_cost_and_queueing() -> None:
    learner = OverheadLearner()
    assert learner.observe([split_round()], served_at_once=3) == []
    known = learner.device("a")
    assert known.source == "measured"
    assert known.exchange_s == pytest.approx(4 * MS)  # 9 - 1 - 4
    assert known.split_compute_s == pytest.approx(3 * MS)  # 50 / 10 - 2
    assert known.round_s == pytest.approx(0.030)  # 190 - 50 - 20 - 10 * 9
    assert learner.queue_factor(3) == pytest.approx(2.0)  # 4 ms served for 2 ms profiled


def test_whole_model_rounds_teach_the_round_cost_only() -> None:
    learner = OverheadLearner()
    learner.observe([fl_round()], served_at_once=0)
    known = learner.device("a")
    assert known.round_s == pytest.approx(0.025)
    assert known.exchange_s is None
    assert known.split_compute_s is None
    assert known.source == "measured"
    assert learner.queue_factor(3) is None  # no batch was served


def test_medians_ride_out_an_outlier_round() -> None:
    learner = OverheadLearner(window=5)
    for _ in range(3):
        learner.observe([split_round()], served_at_once=1)
    # One round disturbed by something else: a 100 ms round trip, a 10x slower edge.
    learner.observe(
        [split_round(round_trip_s=0.100, service_s=40 * MS, round_s=1.5)], served_at_once=1
    )
    known = learner.device("a")
    assert known.exchange_s == pytest.approx(4 * MS)
    assert known.round_s == pytest.approx(0.030)
    assert learner.queue_factor(1) == pytest.approx(2.0)


def test_the_window_forgets_old_rounds() -> None:
    learner = OverheadLearner(window=2)
    learner.observe([split_round()], served_at_once=1)
    for _ in range(2):  # the round trip grew by 6 ms for good
        learner.observe([split_round(round_trip_s=15 * MS, round_s=0.250)], served_at_once=1)
    assert learner.device("a").exchange_s == pytest.approx(10 * MS)


def test_estimates_never_go_below_zero() -> None:
    learner = OverheadLearner()
    # The cost model over-prices this device: its round trip is shorter than the priced parts.
    learner.observe([split_round(round_trip_s=3 * MS, busy_s=0.010)], served_at_once=1)
    known = learner.device("a")
    assert known.exchange_s == 0.0
    assert known.split_compute_s == 0.0


def test_unknown_devices_take_the_others_figures_else_nothing() -> None:
    learner = OverheadLearner()
    assert learner.device("new").source == "assumed"
    assert learner.device("new").exchange_s is None
    learner.observe(
        [split_round("a"), split_round("b", round_trip_s=11 * MS), fl_round("c")],
        served_at_once=2,
    )
    # c never split: the split figures of a and b (their median), its own round cost.
    known = learner.device("c")
    assert known.source == "from other devices"
    assert known.exchange_s == pytest.approx(5 * MS)  # median of 4 and 6 ms
    assert known.round_s == pytest.approx(0.025)
    stranger = learner.device("d")  # never seen at all: the others' round cost too
    assert stranger.source == "from other devices"
    assert stranger.round_s is not None


def test_bad_observations_are_counted_and_said_not_learned() -> None:
    learner = OverheadLearner()
    problems = learner.observe(
        [split_round(round_s=float("nan")), split_round(batches=0), split_round(busy_s=-1.0)],
        served_at_once=1,
    )
    assert len(problems) == 3
    assert learner.rejected == 3
    assert "not finite" in problems[0]
    assert "no batches" in problems[1]
    assert learner.device("a").source == "assumed"
    assert learner.queue_factor(1) is None


def test_a_split_round_without_round_trips_teaches_compute_and_queueing_only() -> None:
    learner = OverheadLearner()
    learner.observe([split_round(round_trip_s=None)], served_at_once=1)
    known = learner.device("a")
    assert known.exchange_s is None
    assert known.round_s is None
    assert learner.queue_factor(1) == pytest.approx(2.0)


def test_over_assumed_link_rates_neither_theta_nor_the_round_cost_is_learned() -> None:
    learner = OverheadLearner()
    learner.observe([split_round(link_known=False), fl_round("b", link_known=False)], 1)
    known = learner.device("a")
    assert known.exchange_s is None
    assert known.round_s is None
    assert learner.device("b").round_s is None
    assert learner.queue_factor(1) == pytest.approx(2.0)  # the edge's side needs no link


def test_queueing_follows_how_many_devices_are_served_at_once() -> None:
    learner = OverheadLearner()
    learner.observe([split_round(service_s=3 * MS)], served_at_once=1)  # factor 1.5
    learner.observe([split_round(service_s=7 * MS)], served_at_once=3)  # factor 3.5
    assert learner.queue_factor(1) == pytest.approx(1.5)
    assert learner.queue_factor(2) == pytest.approx(2.5)  # between: interpolated
    assert learner.queue_factor(6) == pytest.approx(7.0)  # beyond: grows with the devices
    only_three = OverheadLearner()
    only_three.observe([split_round(service_s=7 * MS)], served_at_once=3)
    assert only_three.queue_factor(1) == pytest.approx(3.5 / 3)  # and shrinks below
    assert learner.queue_factor(0) is None
    # Pooled over the round's devices, by their batches: (10 * 4 + 30 * 6) / (40 * 2) ms.
    pooled = OverheadLearner()
    pooled.observe(
        [split_round("a"), split_round("b", batches=30, service_s=6 * MS)], served_at_once=2
    )
    assert pooled.queue_factor(2) == pytest.approx(220 / 80)


def test_the_window_must_hold_a_sample() -> None:
    with pytest.raises(ValueError, match="window"):
        OverheadLearner(window=0)


# --- into the plan ---------------------------------------------------------------------------

BLOCKS = 5
SERVER = BlockProfile(
    forward_s=(0.0002,) * BLOCKS,
    backward_s=(0.0004,) * BLOCKS,
    batch_size=32,
    activation_bytes=(131_072, 32_768, 16_384, 4_096, 1_280),
    param_bytes=(640, 4_640, 0, 18_464, 1_290),
    activation_memory_bytes=(131_072, 32_768, 16_384, 4_096, 1_280),
    device="cpu",
    torch_threads=1,
)
# A loopback host: devices about as fast as the edge, links of 2 Gbit/s.
DEVICE_TIMES = ComputeProfile(
    model="small_cnn", batch_size=32, forward_s=(0.0002,) * BLOCKS, backward_s=(0.0004,) * BLOCKS
)
DEFAULTS = PlanDefaults(
    power=PowerFigures(compute_w=5.0, transmit_w=1.5, receive_w=1.5), link_bps=20e6
)


def planner(policy: str = "ares", fixed_split: int = 1) -> SplitPlanner:
    return SplitPlanner(
        policy=policy,
        alpha=0.5,
        model_name="small_cnn",
        server=SERVER,
        defaults=DEFAULTS,
        fixed_split=fixed_split,
        fixed_splits={},
    )


def readings(**changes: Any) -> DeviceReadings:
    fields: dict[str, Any] = dict(
        samples=480, compute=DEVICE_TIMES, uplink_bps=2e9, downlink_bps=2e9, link_source="measured"
    )
    return DeviceReadings(**{**fields, **changes})


def test_learned_overheads_that_make_split_cuts_slow_send_ares_to_fl() -> None:
    devices = {d: readings() for d in ("dev-0", "dev-1", "dev-2")}
    # Nothing learned: the edge computes as fast as the devices and the link is nearly free, so
    # a split cut saves the devices' energy for little time.
    naive = planner().plan(devices)
    (cut,) = set(naive.splits.values())
    assert cut < BLOCKS
    assert "Theta assumed 0" in naive.devices["dev-0"].inputs
    assert "edge queueing assumed none" in naive.devices["dev-0"].inputs
    # The demo's measurements (3 devices on 2 cores): Theta 5 ms, 3 ms more device compute per
    # split batch, and an edge 7 times slower than its profile while it serves all three.
    learned = {
        d: readings(
            exchange_s=5 * MS,
            split_compute_s=3 * MS,
            round_overhead_s=0.012,
            overhead_source="measured",
            queue_factor=7.0,
        )
        for d in devices
    }
    plan = planner().plan(learned)
    assert set(plan.splits.values()) == {BLOCKS}
    entry = plan.devices["dev-0"]
    assert "Theta 5.0 ms + split compute 3.0 ms per batch measured" in entry.inputs
    assert "edge queueing x7.00 measured" in entry.inputs
    assert "round overhead 12 ms measured" in entry.inputs
    # fl is both faster and no costlier than that split cut, as priced now.
    sl = planner("sl", fixed_split=cut).plan(learned)
    assert sl.splits["dev-0"] == cut
    assert entry.predicted_time_s < sl.devices["dev-0"].predicted_time_s
    assert entry.predicted_energy_j <= sl.devices["dev-0"].predicted_energy_j


def test_the_round_overhead_is_paid_at_every_cut_and_theta_only_when_split() -> None:
    base = {"a": readings()}
    fl, sl = planner("fl"), planner("sl")
    extra = {"a": readings(round_overhead_s=0.015, exchange_s=2 * MS, split_compute_s=1 * MS)}
    batches = 15  # 480 samples in batches of 32
    assert fl.plan(extra).devices["a"].predicted_time_s == pytest.approx(
        fl.plan(base).devices["a"].predicted_time_s + 0.015
    )
    assert sl.plan(extra).devices["a"].predicted_time_s == pytest.approx(
        sl.plan(base).devices["a"].predicted_time_s + 0.015 + batches * 3 * MS
    )
    # Energy: the extra compute at compute power, Theta as the receiving it is accounted as.
    assert sl.plan(extra).devices["a"].predicted_energy_j == pytest.approx(
        sl.plan(base).devices["a"].predicted_energy_j + batches * (5.0 * 1 * MS + 1.5 * 2 * MS)
    )


def test_queueing_scales_the_edges_part_only() -> None:
    sl = planner("sl")
    base = sl.plan({"a": readings()}).devices["a"].predicted_time_s
    queued = sl.plan({"a": readings(queue_factor=3.0)}).devices["a"].predicted_time_s
    edge_after_cut_1 = (BLOCKS - 1) * 0.0006
    assert queued - base == pytest.approx(15 * 2 * edge_after_cut_1)


def test_the_priced_parts_add_up_to_the_plans_prediction() -> None:
    """round_observations prices a round as the cost model does: a round measured exactly as
    predicted teaches nothing (all learned figures zero, the queueing factor one)."""
    for policy, cut in (("sl", 1), ("fl", BLOCKS)):
        split_planner = planner(policy)
        reading = readings(uplink_bps=50e6, downlink_bps=80e6, weight_scale=0.5)
        plan = split_planner.plan({"a": reading})
        entry = plan.devices["a"]
        assert entry.cut == cut
        priced = round_observations(
            [DeviceResult("a", cut, "ok", batches=15, round_s=1.0)],
            plan,
            {"a": reading},
            split_planner,
        )[0]
        per_batch = priced.compute_s + priced.transfer_s + priced.edge_compute_s
        assert 15 * per_batch + priced.weights_s == pytest.approx(entry.predicted_time_s)
        assert priced.split == (cut < BLOCKS)
        # As measured: busy as priced, the edge at its profile, round trips of transfer + service.
        exact = RoundObservation(
            device_id="a",
            split=priced.split,
            batches=15,
            round_s=entry.predicted_time_s,
            busy_s=15 * priced.compute_s,
            weights_s=priced.weights_s,
            compute_s=priced.compute_s,
            transfer_s=priced.transfer_s,
            edge_compute_s=priced.edge_compute_s,
            service_s=priced.edge_compute_s,
            round_trip_s=priced.transfer_s + priced.edge_compute_s if priced.split else None,
        )
        learner = OverheadLearner()
        learner.observe([exact], served_at_once=1 if priced.split else 0)
        known = learner.device("a")
        assert known.round_s == pytest.approx(0.0, abs=1e-9)
        if priced.split:
            assert known.exchange_s == pytest.approx(0.0, abs=1e-9)
            assert known.split_compute_s == pytest.approx(0.0, abs=1e-9)
            assert learner.queue_factor(1) == pytest.approx(1.0)


def test_only_whole_rounds_are_observed() -> None:
    split_planner = planner("sl")
    reading = readings()
    plan = split_planner.plan({"a": reading, "b": reading, "c": reading})
    results = [
        DeviceResult("a", 1, "ok", batches=15, round_s=0.2, rtt_median_s=0.01, service_s=0.05),
        DeviceResult("b", 1, "straggler", batches=7, round_s=0.5),
        DeviceResult("c", 1, "dropped"),
    ]
    observed = round_observations(results, plan, dict.fromkeys("abc", reading), split_planner)
    assert [o.device_id for o in observed] == ["a"]
    assert observed[0].service_s == pytest.approx(0.05 / 15)
    assert observed[0].round_trip_s == 0.01


def test_the_weights_count_as_sent_where_the_edge_knows_their_bytes() -> None:
    split_planner = planner("fl")
    devices = {
        "a": readings(uplink_bps=8e6, downlink_bps=16e6),
        "b": readings(uplink_bps=None, downlink_bps=None),
    }
    plan = split_planner.plan(devices)
    sent = DeviceResult("a", BLOCKS, "ok", batches=15, round_s=0.5)
    sent.weights_down_bytes, sent.weights_up_bytes = 100_000, 50_000
    results = [
        sent,
        DeviceResult("b", BLOCKS, "ok", batches=15, round_s=0.5),
    ]
    counted, priced = round_observations(results, plan, devices, split_planner)
    assert counted.weights_s == pytest.approx(50_000 * 8 / 8e6 + 100_000 * 8 / 16e6)
    assert counted.link_known
    assert priced.weights_s == pytest.approx(2 * 8 * sum(SERVER.param_bytes) / 20e6)
    assert not priced.link_known  # b's link was the edge's assumption


def test_with_overheads_puts_the_learned_figures_in_the_readings() -> None:
    learner = OverheadLearner()
    learner.observe([split_round("a"), split_round("b")], served_at_once=2)
    out = with_overheads({"a": readings(), "b": readings(), "new": readings()}, learner)
    assert out["a"].exchange_s == pytest.approx(4 * MS)
    assert out["a"].overhead_source == "measured"
    assert out["new"].overhead_source == "from other devices"
    # Three devices may be served at once now: beyond the two measured, scaled up.
    assert [r.queue_factor for r in out.values()] == [pytest.approx(3.0)] * 3


# --- the timings the planner prices a device's blocks with -----------------------------------


def _timings(factor: float) -> ComputeProfile:
    return ComputeProfile(
        model="small_cnn", batch_size=32, forward_s=(factor,) * BLOCKS, backward_s=(factor,) * 5
    )


def test_timings_after_a_split_round_do_not_replace_the_plain_ones() -> None:
    registry = DeviceRegistry(assumed_link_bps=20e6, stale_after_s=60)
    registry.register("a", Hello(device_id="a", instance="i", agent_version="x", samples=64,
                                 dataset="digits", input_shape=(1, 8, 8),
                                 num_classes=10))  # fmt: skip
    record = registry["a"]
    registry.take_telemetry("a", Telemetry(device_id="a", compute=_timings(1.0)))  # its profile
    record.started(1, split=False)
    registry.take_telemetry("a", Telemetry(device_id="a", round=1, compute=_timings(1.5)))
    assert registry.readings("a", 4, 64).compute == _timings(1.5)
    record.started(2, split=True)
    # Round 2 was split: its timings (a factor measured at one block) are not the blocks' own,
    # nor are a periodic telemetry's while it may carry them.
    registry.take_telemetry("a", Telemetry(device_id="a", round=2, compute=_timings(6.0)))
    registry.take_telemetry("a", Telemetry(device_id="a", compute=_timings(6.0)))
    assert registry.readings("a", 4, 64).compute == _timings(1.5)
    assert record.compute == _timings(6.0)  # the latest, for everything else
    record.started(3, split=False)
    registry.take_telemetry("a", Telemetry(device_id="a", compute=_timings(6.0)))  # still 2's
    assert registry.readings("a", 4, 64).compute == _timings(1.5)
    registry.take_telemetry("a", Telemetry(device_id="a", round=3, compute=_timings(1.2)))
    assert registry.readings("a", 4, 64).compute == _timings(1.2)
