"""Board compute from block costs: the rates' fit, on synthetic data and on the paper's VGG5."""

from __future__ import annotations

import pytest

from planner import PlanningError, paper
from planner.compute import BlockCosts, BoardCompute, FitRow, PhaseRates, fit_phase

COSTS = BlockCosts(flops=(100, 300, 50), moved_bytes=(40, 10, 20), param_bytes=(0, 500, 30))

# The fit's error on the paper's VGG5, per cut (fitted - measured) / measured: the Pi's figures
# are explained by FLOPs and bytes to within this; the Nano's are not (see planner.compute).
PI_TOLERANCE = 0.12  # worst: +11.2% at forward cut 4 (1.632 s fitted against 1.467 s)
NANO_WORST = 3.2  # +313% at forward cut 3 (0.082 s fitted against 0.020 s)


def boards() -> dict[str, BoardCompute]:
    return {
        "raspberry-pi-3b+": paper.board_compute(paper.raspberry_pi("pi")),
        **{
            f"jetson-nano-{mode}": paper.board_compute(paper.jetson_nano("nano", mode))
            for mode in paper.NANO_MODES
        },
        "paper-edge": paper.board_compute(paper.edge_server()),
    }


def test_costs_at_a_batch() -> None:
    flops, moved = COSTS.at(10)
    assert flops == (1000.0, 3000.0, 500.0)
    assert moved == (400.0, 600.0, 230.0)  # activations per sample, weights once per batch
    assert COSTS.num_blocks == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"flops": (), "moved_bytes": (), "param_bytes": ()}, "at least one"),
        ({"flops": (1,), "moved_bytes": (1, 2), "param_bytes": (1,)}, "moved_bytes"),
        ({"flops": (-1,), "moved_bytes": (1,), "param_bytes": (1,)}, "flops"),
        ({"flops": (1.5,), "moved_bytes": (1,), "param_bytes": (1,)}, "flops"),
    ],
)
def test_bad_costs(kwargs: dict[str, tuple[float, ...]], match: str) -> None:
    with pytest.raises(PlanningError, match=match):
        BlockCosts(**kwargs)  # type: ignore[arg-type]


def test_the_fit_recovers_the_rates_that_made_the_times() -> None:
    rates = PhaseRates(per_flop_s=2e-3, per_byte_s=5e-4)
    fitted = fit_phase(rates.times(COSTS, 8), COSTS, 8)
    assert fitted.per_flop_s == pytest.approx(2e-3)
    assert fitted.per_byte_s == pytest.approx(5e-4)


def test_a_rate_that_would_be_negative_is_zero_and_the_total_is_kept() -> None:
    # Times that fall as bytes grow: the unconstrained byte rate is negative.
    times = (1.0, 3.0, 0.1)
    fitted = fit_phase(times, COSTS, 1)
    assert fitted.per_byte_s == 0.0
    assert fitted.per_flop_s > 0
    assert sum(fitted.times(COSTS, 1)) == pytest.approx(sum(times))


def test_no_time_fits_zero_rates() -> None:
    assert fit_phase((0.0, 0.0, 0.0), COSTS, 1) == PhaseRates(0.0, 0.0)
    with pytest.raises(PlanningError, match="costs have 3"):
        fit_phase((1.0,), COSTS, 1)
    with pytest.raises(PlanningError, match="finite"):
        fit_phase((1.0, -1.0, 1.0), COSTS, 1)


def test_the_reference_keeps_its_measured_times() -> None:
    for board in boards().values():
        forward, backward = board.block_times(paper.VGG5_COSTS, 50)
        assert forward == pytest.approx(tuple(t / 2 for t in board.forward_s))
        assert backward == pytest.approx(tuple(t / 2 for t in board.backward_s))


def test_fit_on_the_papers_vgg5() -> None:
    """The method's error on the measurements it was fitted to (printed with pytest -s)."""
    lines = [f"{'board':<22} {'phase':<8} {'cut':>3} {'measured s':>10} {'fitted s':>9} {'err':>6}"]
    worst: dict[str, float] = {}
    for name, board in boards().items():
        rows = board.fit_table()
        assert len(rows) == 2 * len(paper.VGG5_OUTPUT_ELEMENTS)
        for row in rows:
            if name not in ("raspberry-pi-3b+", "jetson-nano-maxn"):
                worst[name] = max(worst.get(name, 0.0), abs(row.error))
                continue  # scaled MAXN: the same table, times the mode's slowdown
            lines.append(
                f"{name:<22} {row.phase:<8} {row.cut:>3} {row.measured_s:>10.4f} "
                f"{row.fitted_s:>9.4f} {row.error:>+6.0%}"
            )
            worst[name] = max(worst.get(name, 0.0), abs(row.error))
        # Anchored: the whole model's fitted time is the measured total, in both phases.
        for phase in ("forward", "backward"):
            last = [r for r in rows if r.phase == phase][-1]
            assert last.fitted_s == pytest.approx(last.measured_s)
    print("\n" + "\n".join(lines))
    assert worst["raspberry-pi-3b+"] <= PI_TOLERANCE
    # Every Nano mode (and the edge, Nano / 20) is MAXN scaled: the same relative errors.
    nano = {v for k, v in worst.items() if k != "raspberry-pi-3b+"}
    assert max(nano) == pytest.approx(min(nano))
    assert max(nano) <= NANO_WORST


def test_boards_keep_their_order_on_other_models() -> None:
    # A convolution-heavy model and a memory-heavy one: the Pi is slower than every Nano mode,
    # and the Nano modes keep the order of their assumed slowdowns.
    heavy = BlockCosts(flops=(10**7, 10**7), moved_bytes=(10**4, 10**4), param_bytes=(10**5, 0))
    wide = BlockCosts(flops=(10**4, 10**4), moved_bytes=(10**6, 10**6), param_bytes=(0, 10**3))
    compute = boards()
    order = [
        "paper-edge",
        "jetson-nano-maxn",
        "jetson-nano-5w",
        "jetson-nano-5w-3core",
        "jetson-nano-5w-1core",
        "raspberry-pi-3b+",
    ]
    for costs in (heavy, wide):
        totals = [sum(map(sum, compute[name].block_times(costs, 32))) for name in order]
        assert totals == sorted(totals)
        assert all(t > 0 for t in totals)


def test_fit_row_error() -> None:
    assert FitRow("forward", 1, 2.0, 3.0).error == pytest.approx(0.5)
    assert FitRow("forward", 1, 0.0, 0.0).error == 0.0
    assert FitRow("forward", 1, 0.0, 1.0).error == float("inf")
