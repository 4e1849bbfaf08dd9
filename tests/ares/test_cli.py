"""The ``ares`` command's settings errors and warnings: they name where a value came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from ares.cli import main


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line an invalid command prints (it must exit with status 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_an_invalid_flag_is_named_as_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(["edge", "--alpha", "2"], capsys)
    assert "alpha" in err
    assert "--alpha" in err
    assert "ARES_ALPHA" not in err


def test_an_invalid_variable_is_named_as_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARES_ALPHA", "2")
    err = error_of(["edge"], capsys)
    assert "env ARES_ALPHA" in err
    assert "--alpha" not in err


def test_an_invalid_file_value_is_named_with_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("alpha = 2\n")
    err = error_of(["edge", "--config", str(path)], capsys)
    assert f"file {path}" in err
    assert "--alpha" not in err
    assert "ARES_ALPHA" not in err


def test_a_nested_setting_names_its_flag_and_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    err = error_of(["device", "--id", "pi-1", "--broker", "notaurl"], capsys)
    assert "mqtt.url" in err
    assert "--broker" in err
    monkeypatch.setenv("ARES_MQTT__URL", "notaurl")
    err = error_of(["device", "--id", "pi-1"], capsys)
    assert "env ARES_MQTT__URL" in err


def test_unknown_ares_variables_are_warned_about(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARES_ROUNDZ", "3")
    monkeypatch.setenv("ARES_NOTHING_LIKE_IT", "1")
    # Variables of the scripts, the broker and the deployment are not settings, but known.
    for name in ("ARES_MOSQUITTO", "ARES_VENV", "ARES_TORCH_VERSION", "ARES_BROKER_DIR"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("ARES_ROUNDS", "3")
    assert main(["config", "show", "edge"]) == 0
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2, warnings
    assert any("ARES_ROUNDZ" in w and "ARES_ROUNDS?" in w for w in warnings)
    assert any("ARES_NOTHING_LIKE_IT" in w for w in warnings)


def test_an_unknown_nested_variable_is_refused_by_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The [mqtt] table refuses unknown keys itself, so this one is an error, not a warning.
    monkeypatch.setenv("ARES_MQTT__URLL", "mqtt://127.0.0.1:1883")
    err = error_of(["config", "show", "edge"], capsys)
    assert "mqtt.urll" in err
    assert "env ARES_MQTT__URLL" in err
