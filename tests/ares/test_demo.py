"""`ares demo` end to end: separate processes, a real Mosquitto, a report that validates."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow")


class DeviceEntry(_Strict):
    split: int = Field(ge=1)
    status: Literal["ok", "straggler", "dropped"]
    batches: int = Field(ge=0)
    samples: int = Field(ge=0)
    busy_s: float = Field(ge=0)


class RoundEntry(_Strict):
    round: int = Field(ge=1)
    accuracy: float = Field(ge=0, le=1)
    loss: float = Field(ge=0)
    duration_s: float = Field(gt=0)
    devices: dict[str, DeviceEntry]


class Report(_Strict):
    rounds: list[RoundEntry]
    final_accuracy: float = Field(ge=0, le=1)


def test_demo_runs_processes_and_writes_a_valid_report(tmp_path):
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "ares", "demo", "--devices", "2", "--rounds", "3",
         "--batch-size", "16", "--run-dir", str(tmp_path), "--report", str(report_path)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = Report.model_validate(json.loads(report_path.read_text()))
    assert [r.round for r in report.rounds] == [1, 2, 3]
    assert all(set(r.devices) == {"dev-0", "dev-1"} for r in report.rounds)
    assert report.final_accuracy > 0.5  # chance is 0.1
    assert "final accuracy" in done.stdout
    assert "round  accuracy" in done.stdout  # the per-round table
    for name in ("edge", "dev-0", "dev-1"):
        assert (tmp_path / f"{name}.log").exists()
    # Nothing the demo started outlives it.
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout == ""
