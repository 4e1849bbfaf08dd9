"""A device's block times following how fast its host really ran (device_agent.drift)."""

from __future__ import annotations

import pytest

from device_agent import DeviceAgent, DeviceSettings
from device_agent.drift import DeviceTimings
from device_agent.session import RoundTally
from schemas import ComputeProfile, ModelInfo, RoundStart, TrainConfig
from splitnn.profiling import cumulative


def profile(forward: tuple[float, ...], backward: tuple[float, ...]) -> ComputeProfile:
    return ComputeProfile(model="vgg5", batch_size=10, forward_s=forward, backward_s=backward)


def cut_time(p: ComputeProfile, cut: int) -> float:
    return cumulative(p.forward_s)[cut - 1] + cumulative(p.backward_s)[cut - 1]


def same_times(a: ComputeProfile, b: ComputeProfile) -> bool:
    return (
        (a.model, a.batch_size) == (b.model, b.batch_size)
        and a.forward_s == pytest.approx(b.forward_s)
        and a.backward_s == pytest.approx(b.backward_s)
    )


HOST = profile((0.4, 0.3, 0.1, 0.1), (0.8, 0.6, 0.2, 0.2))
# An emulated board slower than the idle host everywhere, most of all in its last blocks.
BOARD = profile((0.5, 0.5, 0.5, 0.5), (1.0, 1.0, 1.0, 1.0))


def test_a_real_device_scales_every_block_by_its_factor() -> None:
    timings = DeviceTimings(HOST)
    assert same_times(timings.at(1.0), HOST)
    slowed = timings.at(2.0)
    assert slowed.forward_s == pytest.approx([0.8, 0.6, 0.2, 0.2])
    assert slowed.backward_s == pytest.approx([1.6, 1.2, 0.4, 0.4])


def test_the_factor_is_host_time_over_profiled_host_time() -> None:
    timings = DeviceTimings(HOST, BOARD)
    # Cut 2, batch 20 (twice the profile's), 3 batches: the profile says 2.1 s * 2 * 3 = 12.6 s.
    assert timings.host_factor(2, 20, 3, 25.2) == pytest.approx(2.0)
    assert timings.host_factor(2, 20, 0, 25.2) is None  # no batch ran
    assert timings.host_factor(2, 20, 3, 0.0) is None
    with pytest.raises(ValueError, match="cut 5"):
        timings.host_factor(5, 10, 1, 1.0)


def test_an_emulated_board_is_never_faster_than_its_floor() -> None:
    timings = DeviceTimings(HOST, BOARD)
    assert same_times(timings.at(1.0), BOARD)  # the idle host keeps up everywhere
    assert same_times(timings.at(0.5), BOARD)


def test_drift_is_uneven_where_the_host_lags_only_on_some_cuts() -> None:
    """The host at 2x: over blocks [0, 2) it needs 4.2 s against the board's 3.0; over [0, 4)
    5.4 s against 6.0. Only the short cuts cost more than the board's time."""
    drifted = DeviceTimings(HOST, BOARD).at(2.0)
    assert cut_time(drifted, 1) == pytest.approx(max(2 * 1.2, 1.5))
    assert cut_time(drifted, 2) == pytest.approx(4.2)
    assert cut_time(drifted, 4) == pytest.approx(6.0)  # the board's own time
    assert all(t >= 0 for t in (*drifted.forward_s, *drifted.backward_s))
    # One ratio measured at cut 2 (4.2 s / 3.0 s) applied to every cut would price cut 4 at 8.4 s.
    ratio = cut_time(drifted, 2) / cut_time(BOARD, 2)
    assert ratio * cut_time(BOARD, 4) == pytest.approx(8.4)


def test_a_floor_for_another_model_is_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        DeviceTimings(HOST, BOARD.model_copy(update={"batch_size": 20}))


def test_the_agent_plans_its_next_round_with_the_drift_it_measured() -> None:
    agent = DeviceAgent(DeviceSettings(device_id="dev-0", dataset="digits", torch_threads=1))
    agent._profiled = DeviceTimings(HOST, BOARD)
    agent._timings = BOARD
    start = RoundStart(
        session="s", round=3, cut=2, deadline_s=60.0,
        model=ModelInfo(name="vgg5", input_shape=(3, 32, 32), num_classes=10),
        train=TrainConfig(batch_size=10, batches=5, lr=0.01, batch_timeout_s=5.0),
    )  # fmt: skip
    # Five batches at cut 2: the host took twice its profile's 10.5 s, beyond the board's 15 s.
    agent._follow_drift(start, RoundTally(busy_s=21.0, host_s=21.0, batches=5))
    assert agent._speed_ratio == pytest.approx(21.0 / 15.0)  # against the board's 3.0 s a batch
    assert same_times(agent._timings, DeviceTimings(HOST, BOARD).at(2.0))
    assert cut_time(agent._timings, 4) == pytest.approx(6.0)
