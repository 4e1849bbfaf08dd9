"""Built-in emulation profiles and compute pacing."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from planner import paper
from planner.compute import BlockCosts
from planner.profiles import per_block_from_cumulative
from schemas import PowerFigures
from testbed.profiles import (
    PROFILE_NAMES,
    PROFILES,
    ComputePacer,
    EmulationProfile,
    PaceResult,
    PacingError,
    get_profile,
    pad,
)

PI = get_profile("raspberry-pi-3b+")
MAXN = get_profile("jetson-nano-maxn")
BLOCKS = len(paper.VGG5_OUTPUT_ELEMENTS)


def ranges(n: int) -> list[tuple[int, int]]:
    return [(a, b) for a, b in itertools.combinations(range(n + 1), 2)]


def test_names() -> None:
    assert set(PROFILE_NAMES) >= {
        "host",
        "raspberry-pi-3b+",
        "jetson-nano-maxn",
        "jetson-nano-5w",
        "jetson-nano-5w-1core",
        "jetson-nano-5w-3core",
    }
    assert len(set(PROFILE_NAMES)) == len(PROFILE_NAMES)
    assert tuple(p.name for p in PROFILES) == PROFILE_NAMES
    for name in PROFILE_NAMES:
        assert get_profile(name).name == name


def test_unknown_profile_lists_the_names() -> None:
    with pytest.raises(ValueError, match="jetson-nano-maxn") as info:
        get_profile("jetson-nano-turbo")
    assert "jetson-nano-turbo" in str(info.value)
    assert all(name in str(info.value) for name in PROFILE_NAMES)


def test_host_does_not_emulate() -> None:
    host = get_profile("host")
    assert not host.emulated
    assert host.forward_s is None
    assert host.backward_s is None
    pacer = ComputePacer(host)
    assert host.compute() is None
    assert pacer.target_s("forward", 0, 3, 100, "vgg5") is None
    assert pacer.target_s("backward", 0, 3, 7, "small_cnn") is None


def test_profiles_reuse_the_papers_figures() -> None:
    assert PI.forward_s == per_block_from_cumulative(paper.PI_FORWARD_CUMULATIVE)
    assert PI.backward_s == per_block_from_cumulative(paper.PI_BACKWARD_CUMULATIVE)
    assert PI.power == PowerFigures(compute_w=3.8, transmit_w=1.1, receive_w=0.8)
    assert MAXN.forward_s is not None
    assert sum(MAXN.forward_s) == pytest.approx(paper.NANO_MAXN_FORWARD_CUMULATIVE[-1])
    assert MAXN.power == paper.NANO_MAXN_POWER
    for mode in paper.NANO_MODES:
        expected = paper.jetson_nano("x", mode)
        profile = get_profile(f"jetson-nano-{mode}")
        assert profile.forward_s == expected.forward_s
        assert profile.backward_s == expected.backward_s
        assert profile.power == expected.power
        assert profile.memory_bytes == expected.memory_bytes
        assert profile.reference_model == "vgg5"
        assert profile.reference_batch == 100
        assert profile.reference_costs == paper.VGG5_COSTS
        assert profile.num_blocks == BLOCKS


def test_pi_is_slower_than_nano_maxn() -> None:
    pi, maxn = ComputePacer(PI), ComputePacer(MAXN)
    # Forward: every contiguous range of blocks.
    for first, last in ranges(BLOCKS):
        pi_s = pi.target_s("forward", first, last, 100, "vgg5")
        maxn_s = maxn.target_s("forward", first, last, 100, "vgg5")
        assert pi_s is not None
        assert maxn_s is not None
        assert pi_s > maxn_s
    # Backward: the device's blocks [0, cut) and the server's [cut, L) for every cut. (Single
    # backward blocks are not all ordered: the paper's cumulative backward times are noisy, and
    # per-block differencing leaves the Pi's fourth block at zero.)
    prefixes = [(0, cut) for cut in range(1, BLOCKS + 1)]
    suffixes = [(cut, BLOCKS) for cut in range(BLOCKS)]
    for first, last in prefixes + suffixes:
        pi_s = pi.target_s("backward", first, last, 100, "vgg5")
        maxn_s = maxn.target_s("backward", first, last, 100, "vgg5")
        assert pi_s is not None
        assert maxn_s is not None
        assert pi_s > maxn_s


def test_nano_modes_are_ordered() -> None:
    order = ["jetson-nano-maxn", "jetson-nano-5w", "jetson-nano-5w-3core", "jetson-nano-5w-1core"]
    totals = []
    for name in order:
        target = ComputePacer(get_profile(name)).target_s("forward", 0, BLOCKS, 100, "vgg5")
        assert target is not None
        totals.append(target)
    assert totals == sorted(totals)
    assert len(set(totals)) == len(totals)


def test_reference_model_times_are_block_sums() -> None:
    pacer = ComputePacer(PI)
    assert PI.forward_s is not None
    assert pacer.target_s("forward", 0, 1, 100, "vgg5") == pytest.approx(0.861)
    assert pacer.target_s("forward", 0, BLOCKS, 100, "vgg5") == pytest.approx(1.852)
    assert pacer.target_s("forward", 2, 5, 100, "VGG5") == pytest.approx(sum(PI.forward_s[2:5]))
    assert pacer.target_s("backward", 0, BLOCKS, 100, "vgg5") == pytest.approx(2.092)
    assert pacer.target_s("forward", 3, 3, 100, "vgg5") == 0.0


def test_batch_scaling() -> None:
    pacer = ComputePacer(MAXN)
    full = pacer.target_s("forward", 0, 4, 100, "vgg5")
    assert full is not None
    assert pacer.target_s("forward", 0, 4, 20, "vgg5") == pytest.approx(full / 5)
    assert pacer.target_s("forward", 0, 4, 250, "vgg5") == pytest.approx(full * 2.5)


def test_time_scale_divides() -> None:
    slow = ComputePacer(PI)
    fast = ComputePacer(PI, time_scale=4.0)
    for phase in ("forward", "backward"):
        for first, last in ranges(BLOCKS):
            a = slow.target_s(phase, first, last, 32, "vgg5")
            b = fast.target_s(phase, first, last, 32, "vgg5")
            assert a is not None
            assert b == pytest.approx(a / 4)


def test_other_model_is_priced_from_its_costs_at_the_fitted_rates() -> None:
    # What a model's blocks compute and move, at the board's rates fitted to its VGG5 times:
    # no host timings involved (they used to set the slowdown, so the emulation depended on
    # the host and its noise).
    costs = BlockCosts(flops=(1000, 5000), moved_bytes=(400, 80), param_bytes=(100, 2000))
    pacer = ComputePacer(PI, time_scale=2.0)
    compute = PI.compute()
    assert compute is not None
    forward, backward = compute.block_times(costs, 64)
    assert pacer.block_times("forward", 64, "mine", costs) == pytest.approx(
        tuple(t / 2.0 for t in forward)
    )
    target = pacer.target_s("backward", 1, 2, 64, "mine", costs=costs)
    assert target == pytest.approx(backward[1] / 2.0)
    # The rates: per FLOP and per byte, weights once per batch, activations per sample.
    rates = compute.forward_rates
    assert forward[0] == pytest.approx(rates.per_flop_s * 64_000 + rates.per_byte_s * 25_700)


def test_the_reference_model_is_known_by_its_costs() -> None:
    pacer = ComputePacer(MAXN)
    measured = pacer.target_s("forward", 0, BLOCKS, 100, "vgg5")
    # The paper's VGG5 under any name keeps the measured figures...
    assert pacer.target_s("forward", 0, BLOCKS, 100, "copy", costs=paper.VGG5_COSTS) == measured
    # ...but VGG5 on other inputs (other costs) is priced like any other model.
    other = dataclasses.replace(paper.VGG5_COSTS, flops=(1,) * BLOCKS)
    assert pacer.target_s("forward", 0, BLOCKS, 100, "vgg5", costs=other) != measured


def test_other_model_needs_its_costs() -> None:
    pacer = ComputePacer(MAXN)
    with pytest.raises(PacingError, match="block costs"):
        pacer.target_s("forward", 0, 2, 100, "small_cnn")
    bare = EmulationProfile(name="x", description="", forward_s=(0.1,), backward_s=(0.1,))
    costs = BlockCosts(flops=(1,), moved_bytes=(1,), param_bytes=(0,))
    with pytest.raises(PacingError, match="no reference costs"):
        ComputePacer(bare).target_s("forward", 0, 1, 100, "small_cnn", costs=costs)
    with pytest.raises(ValueError, match="reference_costs has 7 blocks"):
        EmulationProfile(
            name="x",
            description="",
            forward_s=(0.1,),
            backward_s=(0.1,),
            reference_costs=paper.VGG5_COSTS,
        )


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_time_scale(scale: float) -> None:
    with pytest.raises(ValueError, match="time_scale"):
        ComputePacer(PI, time_scale=scale)


def test_bad_target_arguments() -> None:
    pacer = ComputePacer(PI)
    with pytest.raises(ValueError, match="phase"):
        pacer.target_s("sideways", 0, 1, 100, "vgg5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a range"):
        pacer.target_s("forward", 3, 1, 100, "vgg5")
    with pytest.raises(ValueError, match="not a range"):
        pacer.target_s("forward", -1, 1, 100, "vgg5")
    with pytest.raises(ValueError, match="exceed"):
        pacer.target_s("forward", 0, BLOCKS + 1, 100, "vgg5")
    with pytest.raises(ValueError, match="batch_size"):
        pacer.target_s("forward", 0, 1, 0, "vgg5")


def test_profile_validation() -> None:
    with pytest.raises(ValueError, match="both"):
        EmulationProfile(name="x", description="", forward_s=(0.1,), backward_s=None)
    with pytest.raises(ValueError, match="backward_s has 1 blocks"):
        EmulationProfile(name="x", description="", forward_s=(0.1, 0.2), backward_s=(0.1,))
    with pytest.raises(ValueError, match="forward_s"):
        EmulationProfile(name="x", description="", forward_s=(-0.1,), backward_s=(0.1,))
    with pytest.raises(ValueError, match="reference_batch"):
        EmulationProfile(
            name="x", description="", forward_s=(0.1,), backward_s=(0.1,), reference_batch=0
        )
    custom = EmulationProfile(
        name="tiny",
        description="",
        forward_s=[0.1, 0.2],  # type: ignore[arg-type]
        backward_s=[0.3, 0.4],  # type: ignore[arg-type]
    )
    assert custom.forward_s == (0.1, 0.2)  # stored as tuples


@pytest.mark.parametrize(
    ("actual", "target", "expected"),
    [
        (0.2, 1.0, PaceResult(sleep_s=0.8, behind_s=0.0)),
        (1.5, 1.0, PaceResult(sleep_s=0.0, behind_s=0.5)),
        (1.0, 1.0, PaceResult(sleep_s=0.0, behind_s=0.0)),
        (0.3, None, PaceResult(sleep_s=0.0, behind_s=0.0)),
        (0.0, 0.0, PaceResult(sleep_s=0.0, behind_s=0.0)),
    ],
)
def test_pad(actual: float, target: float | None, expected: PaceResult) -> None:
    result = pad(actual, target)
    assert result.sleep_s == pytest.approx(expected.sleep_s)
    assert result.behind_s == pytest.approx(expected.behind_s)


def test_pad_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="actual_s"):
        pad(-0.1, 1.0)
    with pytest.raises(ValueError, match="target_s"):
        pad(0.1, float("nan"))


def test_pacing_a_pi_on_a_fast_host() -> None:
    # The usual flow: a fast host pads up to the Pi; a slow one reports being behind.
    pacer = ComputePacer(PI, time_scale=10.0)
    target = pacer.target_s("forward", 0, 2, 100, "vgg5")
    assert target == pytest.approx(0.0947)
    assert pad(0.01, target).sleep_s == pytest.approx(0.0847)
    assert pad(0.2, target).behind_s == pytest.approx(0.2 - 0.0947)
