"""What the serving cost model predicts on the paper's testbed (planner.inference.paper): the
adaptive policy against the best fixed cut without exits, at 20 Mbit/s.

These are PREDICTIONS from the measured per-block times and board power and an ASSUMED exit table
(60% of requests leave at an early exit at threshold 0.9 for 0.8 points of accuracy), not
measurements. Mean per request over the five boards, each weighed equally:

    alpha  policy    latency    energy    accuracy   settings
    0.5    sl-best   10.0 ms    8.90 mJ   80.0%      cut 0 for all (the edge)
    0.5    ares      3.25 ms    5.43 mJ   79.4%      Pi: cut 0; the four Nanos: cut 7, exits 0.9
                     -67.5%     -38.9%
    0.2    ares      3.70 ms    5.21 mJ              Nano 5W one-core: cut 4, exits 0.9
                     -63.0%     -41.4%

Latency clears the issue's -40% at any alpha; energy clears it when alpha leans to energy (0.2)
and falls just short at 0.5: the Pi, a fifth of the mean, gains nothing (the edge is already its
best setting, 5.4 mJ, since its own blocks cost 3.8 W x 18.5 ms), so the Nanos alone must carry
the mean. sl-best here is the edge, because the Pi's cost dominates any shared cut.
"""

from __future__ import annotations

import pytest

from planner.inference import EXITS_OFF, SERVING_POLICIES, InferencePlan
from planner.inference.paper import serving_testbed


def plans(alpha: float) -> dict[str, InferencePlan]:
    problem = serving_testbed(20.0, alpha=alpha)
    return {
        name: SERVING_POLICIES.create(name).decide(problem) for name in SERVING_POLICIES.names()
    }


def test_adaptive_against_sl_best_at_20_mbit_s_alpha_half():
    by_policy = plans(0.5)
    ares, sl_best = by_policy["ares"], by_policy["sl-best"]
    assert set(sl_best.settings.values()) == {(0, EXITS_OFF)}
    assert ares.settings["pi3b"] == (0, EXITS_OFF)
    for nano in ("nano-maxn", "nano-5w", "nano-5w-1core", "nano-5w-3core"):
        assert ares.settings[nano] == (7, 0.9)
    latency = ares.mean_latency_s / sl_best.mean_latency_s - 1.0
    energy = ares.mean_energy_j / sl_best.mean_energy_j - 1.0
    print(
        f"\npredicted, alpha 0.5: ares {ares.mean_latency_s * 1e3:.2f} ms "
        f"{ares.mean_energy_j * 1e3:.2f} mJ; sl-best {sl_best.mean_latency_s * 1e3:.2f} ms "
        f"{sl_best.mean_energy_j * 1e3:.2f} mJ; latency {latency:+.1%}, energy {energy:+.1%}"
    )
    assert ares.mean_latency_s == pytest.approx(3.25e-3, abs=0.01e-3)
    assert sl_best.mean_latency_s == pytest.approx(10.0e-3, abs=0.01e-3)
    assert latency == pytest.approx(-0.675, abs=0.002)
    assert energy == pytest.approx(-0.389, abs=0.002)
    for a in ares.assignments:  # the same accuracy: within 1 point of the full model
        assert a.accuracy >= 0.79


def test_adaptive_against_sl_best_at_20_mbit_s_alpha_energy_leaning():
    by_policy = plans(0.2)
    ares, sl_best = by_policy["ares"], by_policy["sl-best"]
    assert ares.settings["nano-5w-1core"] == (4, 0.9)
    latency = ares.mean_latency_s / sl_best.mean_latency_s - 1.0
    energy = ares.mean_energy_j / sl_best.mean_energy_j - 1.0
    assert latency == pytest.approx(-0.630, abs=0.002)
    assert energy == pytest.approx(-0.414, abs=0.002)
    assert latency <= -0.40
    assert energy <= -0.40


def test_every_policy_stays_within_a_point_of_the_full_model_on_the_testbed():
    for name, plan in plans(0.5).items():
        assert plan.mean_accuracy >= 0.79, name
