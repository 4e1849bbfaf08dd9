"""The serving bench's figures from per-request records: percentiles, accuracy, exit rate,
energy per request, counts, and the p99 windows around a link drop."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from experiments.inference.aggregate import (
    EnergyWindow,
    Record,
    energy_per_request,
    latency_stats,
    summarise,
    summarise_devices,
    windows_p99,
)
from experiments.inference.recovery import link_drops, plan_entry_at, recovery
from experiments.inference.report import goal_check, render_summary


def answered(
    device: str, index: int, latency_ms: float, *, label: int = 1, truth: int = 1, **fields
) -> Record:
    sent = index * 0.1
    return Record(device, f"{device}-{index}", index, truth, sent, sent + latency_ms / 1000,
                  label=label, where=fields.pop("where", "device"), **fields)  # fmt: skip


def test_latency_percentiles_follow_numpy_linear_interpolation():
    values = [float(v) for v in range(1, 101)]
    stats = latency_stats(values)
    assert stats["latency_ms_mean"] == pytest.approx(50.5)
    assert stats["latency_ms_p50"] == pytest.approx(50.5)
    assert stats["latency_ms_p99"] == pytest.approx(np.percentile(values, 99))
    assert latency_stats([]) == {
        "latency_ms_mean": None,
        "latency_ms_p50": None,
        "latency_ms_p99": None,
    }


def test_energy_per_request_is_reported_joules_over_the_requests_in_those_windows():
    windows = [
        EnergyWindow("a", 1.0, requests=10, energy_j=0.5),
        EnergyWindow("a", 2.0, requests=30, energy_j=1.5),
        EnergyWindow("a", 3.0, requests=5, energy_j=None),  # no power figures: left out
    ]
    assert energy_per_request(windows) == pytest.approx(2.0 / 40)
    assert energy_per_request([EnergyWindow("a", 1.0, 0, 0.0)]) is None  # nothing answered
    assert energy_per_request([EnergyWindow("a", 1.0, 4, None)]) is None  # nothing reported


def test_summary_counts_accuracy_and_exit_rate():
    records = [
        answered("a", 0, 10.0, exit=2, cut=4),  # an early exit, right
        answered("a", 1, 20.0, exit=None, cut=4, where="edge", label=3),  # the edge, wrong
        answered("a", 2, 30.0, exit=2, cut=4, degraded=True),  # degraded: not an exit
        Record("a", "a-3", 3, 1, 0.3, 0.35, error="bad_shape"),  # an error answer
        Record("a", "a-4", 4, 1, 0.4),  # lost
    ]
    summary = summarise(records, [EnergyWindow("a", 1.0, 3, 0.3)])
    assert summary["sent"] == 5
    assert summary["answered"] == 4
    assert summary["lost"] == 1
    assert summary["sent"] == summary["answered"] + summary["lost"]
    assert summary["errors"] == 1
    assert summary["degraded"] == 1
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["exit_rate"] == pytest.approx(1 / 3)
    assert summary["edge_rate"] == pytest.approx(1 / 3)
    assert summary["latency_ms_mean"] == pytest.approx(20.0)  # error and lost have none
    assert summary["energy_j_per_request"] == pytest.approx(0.1)


def test_per_device_summaries_keep_each_devices_own_records_and_windows():
    records = [answered("a", 0, 10.0), answered("b", 1, 30.0, label=0)]
    windows = [EnergyWindow("a", 1.0, 1, 0.2), EnergyWindow("b", 1.0, 1, 0.4)]
    devices = summarise_devices(records, windows, ["a", "b", "c"])
    assert devices["a"]["latency_ms_mean"] == pytest.approx(10.0)
    assert devices["b"]["accuracy"] == 0.0
    assert devices["b"]["energy_j_per_request"] == pytest.approx(0.4)
    assert devices["c"]["sent"] == 0
    assert devices["c"]["accuracy"] is None


def test_windows_take_requests_by_send_time():
    records = [answered("a", i, 10.0 if i < 10 else 100.0) for i in range(20)]
    windows = windows_p99(records, {"early": (0.0, 1.0), "late": (1.0, 2.0)})
    assert windows["early"]["requests"] == 10
    assert windows["early"]["latency_ms_p99"] == pytest.approx(10.0)
    assert windows["late"]["latency_ms_p99"] == pytest.approx(100.0)


def test_a_link_drop_is_found_and_its_replan_timed():
    links = {
        "a": {"origin_s": 0.0, "changes": [[0.0, 40.0]]},
        "b": {"origin_s": -2.0, "changes": [[0.0, 40.0], [12.0, 2.0], [30.0, 40.0]]},
    }
    drops = link_drops(links)
    assert [(d.device, d.at_s, d.to_mbps) for d in drops] == [("b", 10.0, 2.0)]
    plans: list[tuple[float, dict[str, Any]]] = [
        (-1.0, {"devices": {"b": {"cut": 0, "threshold": None}}}),
        (11.5, {"devices": {"b": {"cut": 0, "threshold": None}}}),  # unchanged: no re-plan
        (13.0, {"devices": {"b": {"cut": 7, "threshold": 0.9}}}),
    ]
    assert plan_entry_at(plans, "b", 10.0) == (0, None)
    # b's requests: fast before the drop, slow until the re-plan, fast again after it.
    records = [answered("b", i, 5.0 if i < 100 or i >= 130 else 60.0) for i in range(0, 250)]
    result = recovery(records, plans, drops[0], end_s=25.0)
    assert result["drop_to_replan_s"] == pytest.approx(3.0)
    assert result["plan_after"] == {"cut": 7, "threshold": 0.9}
    windows = result["device_windows"]
    assert windows["before_drop"]["latency_ms_p99"] == pytest.approx(5.0)
    assert windows["after_drop"]["latency_ms_p99"] == pytest.approx(60.0)
    assert windows["after_replan"]["latency_ms_p99"] == pytest.approx(5.0)
    assert result["recovered"] is True


def test_the_goal_compares_ares_with_sl_best_at_the_full_models_accuracy():
    def policy(latency: float, energy: float, accuracy: float) -> dict:
        return {
            "latency_ms_mean": latency, "latency_ms_p50": latency, "latency_ms_p99": latency,
            "energy_j_per_request": energy, "accuracy": accuracy, "exit_rate": 0.5,
            "edge_rate": 0.5, "sent": 1, "answered": 1, "degraded": 0, "errors": 0, "lost": 0,
            "devices": {},
        }  # fmt: skip

    document: dict[str, Any] = {
        "full_accuracy": 0.80,
        "policies": {"ares": policy(5.0, 0.004, 0.795), "sl-best": policy(10.0, 0.008, 0.80)},
    }
    goal = goal_check(document)
    assert goal is not None
    assert goal["latency_change"] == pytest.approx(-0.5)
    assert goal["energy_change"] == pytest.approx(-0.5)
    assert goal["met"]
    document["policies"]["ares"]["accuracy"] = 0.78  # two points below the full model
    worse = goal_check(document)
    assert worse is not None
    assert not worse["met"]
    assert not math.isnan(goal["latency_change"])
    document.update(
        scenario="s", requests_per_device=1, rate=1.0, deadline_ms=1000.0, alpha=0.5, seed=0,
        artifact={"model": "m", "fingerprint": "f" * 16, "exits": [2], "full_accuracy": 0.8},
        failed={},
    )  # fmt: skip
    text = render_summary(document)
    assert "| ares |" in text
    assert "not met" in text
