"""Hand-made run reports and a results.json document built from them, for the bench's tests."""

from __future__ import annotations

from typing import Any

from experiments.comparison import summarise


def device(
    cut: int = 3,
    energy: float = 1.0,
    *,
    status: str = "ok",
    busy: float = 1.0,
    batches: int = 2,
    rtt: float | None = 0.5,
    predicted: float = 2.0,
    behind: float = 0.0,
    uplink: float | None = 20.0,
) -> dict[str, Any]:
    return {
        "cut": cut, "predicted_time_s": predicted, "predicted_energy_j": energy,
        "status": status, "batches": batches, "samples": 32 * batches, "busy_s": busy,
        "server_s": 0.1, "train_loss": 1.0, "rtt_median_s": rtt, "energy_j": energy,
        "uplink_mbps": uplink, "downlink_mbps": uplink, "battery_pct": None, "link_mode": "tc",
        "emulation_behind_s": behind,
    }  # fmt: skip


def report(
    policy: str,
    rounds: list[tuple[float, float, dict[str, dict[str, Any]]]],
    initial: float | None = 0.1,
) -> dict[str, Any]:
    """rounds: (accuracy, duration_s, devices) per round."""
    return {
        "policy": policy,
        "alpha": 0.5,
        "model": "small_cnn",
        "dataset": "digits",
        "session": "s",
        "started_at": 0.0,
        "initial_accuracy": initial,
        "final_accuracy": rounds[-1][0] if rounds else None,
        "wall_s": sum(r[1] for r in rounds) + 5.0,
        "counters": {},
        "rounds": [
            {
                "round": i,
                "accuracy": acc,
                "loss": 1.0,
                "train_loss": 1.0,
                "duration_s": dur,
                "objective": 0.8,
                "devices": devices,
            }
            for i, (acc, dur, devices) in enumerate(rounds, start=1)
        ],
    }


def three_policies(ares_behind: float = 0.0) -> dict[str, dict[str, Any]]:
    """fl: 100 s, 60 J; ares: 60 s, 30 J (or worse, see the tests); sl-best: 80 s, 45 J."""
    fl = report("fl", [
        (0.5, 50.0, {"a": device(5, 20.0), "b": device(5, 10.0)}),
        (0.8, 50.0, {"a": device(5, 20.0), "b": device(5, 10.0)}),
    ])  # fmt: skip
    ares = report("ares", [
        (0.5, 30.0, {"a": device(2, 10.0, behind=ares_behind), "b": device(3, 5.0)}),
        (0.7, 30.0, {"a": device(1, 10.0), "b": device(3, 5.0)}),
    ])  # fmt: skip
    sl = report("sl", [
        (0.4, 40.0, {"a": device(2, 15.0), "b": device(2, 7.5, status="straggler")}),
        (0.9, 40.0, {"a": device(2, 15.0), "b": device(2, 7.5)}),
    ])  # fmt: skip
    return {"fl": fl, "ares": ares, "sl-best": sl}


def results_document(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "scenario": {"name": "hand-made", "description": "two devices"},
        "machine": {"cpus": 2, "python": "3.11", "torch": "2", "platform": "Linux"},
        "settings": {
            "alpha": 0.5,
            "rounds": 2,
            "seed": 0,
            "policies": list(reports),
            "link_mode": "tc",
            "sl_best": {"cut": 2, "how": "by hand"},
        },
        "policies": reports,
        "failed": {},
        "summary": summarise(reports, alpha=0.5),
    }
