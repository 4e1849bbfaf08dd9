"""The run report's models: what the edge writes is what every reader reads, old reports too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_service.report import RunReport as EdgeReport
from schemas.report import REPORT_VERSION, DeviceRoundReport, RoundReport, RunReport


def _device(**changes: object) -> dict:
    return {
        "cut": 3, "predicted_time_s": 1.0, "predicted_energy_j": 2.0, "status": "ok",
        "batches": 4, "samples": 128, "busy_s": 0.5, "server_s": 0.25, "train_loss": 1.5,
        "rtt_median_s": 0.01, "energy_j": 3.0, "uplink_mbps": 20.0, "downlink_mbps": None,
        "battery_pct": None, "link_mode": "direct", "emulation_behind_s": 0.0, **changes,
    }  # fmt: skip


def _report(device: dict) -> dict:
    return {
        "policy": "ares", "alpha": 0.5, "model": "small_cnn", "dataset": "digits",
        "session": "s1", "started_at": 1.0, "final_accuracy": 0.5,
        "rounds": [{"round": 1, "accuracy": 0.5, "loss": 1.0, "train_loss": 1.5,
                    "duration_s": 2.0, "objective": 0.8, "devices": {"pi": device}}],
    }  # fmt: skip


def test_the_edge_writes_version_2_with_cut(tmp_path: Path) -> None:
    report = EdgeReport.model_validate(_report(_device()))
    report.wall_s = 3.0  # the edge's copy takes updates
    report.write(tmp_path / "report.json")
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["v"] == REPORT_VERSION == 2
    assert written["rounds"][0]["devices"]["pi"]["cut"] == 3
    assert "split" not in written["rounds"][0]["devices"]["pi"]
    assert RunReport.model_validate(written).model_dump() == report.model_dump()


def test_a_version_1_report_reads_its_split_as_the_cut() -> None:
    old = _device(split=5)
    del old["cut"]
    device = DeviceRoundReport.model_validate(old)
    assert device.cut == 5
    assert device.round_s is None  # fields added since: defaults
    assert device.weights_s == 0.0
    report = RunReport.model_validate(_report(old))  # no "v": version 1
    assert report.v == REPORT_VERSION
    assert report.rounds[0].devices["pi"].cut == 5
    assert "split" not in report.model_dump()["rounds"][0]["devices"]["pi"]


def test_the_document_is_frozen_and_strict() -> None:
    report = RunReport.model_validate(_report(_device()))
    with pytest.raises(ValidationError):
        report.wall_s = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="unknown"):
        RunReport.model_validate({**_report(_device()), "unknown": 1})
    with pytest.raises(ValidationError, match="v"):
        RunReport.model_validate({**_report(_device()), "v": 3})
    with pytest.raises(ValidationError, match="status"):
        RoundReport.model_validate(_report({**_device(), "status": None})["rounds"][0])
