"""Scenarios on every command: one loader, one style of error, one set of names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ares.cli import main

BAD = {
    "invalid": "name: s\ndevices:\n  - {id: a, colour: red}\n",
    "unparsable": "name: [unclosed\ndevices: []\n",
}


@pytest.mark.parametrize("problem", sorted(BAD))
def test_a_bad_scenario_is_one_line_alike_on_every_command(
    problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(BAD[problem])
    commands = {
        "demo": ["demo", "--scenario", str(path), "--run-dir", str(tmp_path / "run")],
        "bench": ["bench", "--scenario", str(path), "--out", str(tmp_path / "out")],
        "plan": ["plan", str(path)],
    }
    messages = {}
    for command, argv in commands.items():
        assert main(argv) == 2, command
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"ares {command}: {path}: ")
        assert "pydantic" not in err
        assert "^" not in err
        messages[command] = err.split(": ", 1)[1]
    assert len(set(messages.values())) == 1, messages
    assert ("colour" if problem == "invalid" else "line 2") in messages["plan"]


def test_plan_takes_a_shipped_scenario_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "bandwidth-drop", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert set(plan["devices"]) == {"nano-a", "pi-b", "nano-c"}


def test_plan_takes_a_scenario_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(
        "name: lab\nmodel: vgg5\ndataset: synthetic\nbatch_size: 20\nbatches_per_round: 5\n"
        "devices:\n  - {id: pi, profile: raspberry-pi-3b+, uplink: 2}\n"
        "  - {id: nano, profile: jetson-nano-maxn, uplink: {steps: [[0, 40], [60, 2]]}}\n"
    )
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path} (scenario lab): 2 devices")


def test_names_are_listed_alike(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "no-such-thing"]) == 2
    err = capsys.readouterr().err
    assert "bandwidth-drop" in err  # a scenario
    assert "mixed-links" in err  # a plan example
