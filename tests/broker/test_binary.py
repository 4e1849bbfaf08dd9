"""Finding the mosquitto executable, and the install hint when there is none."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker import INSTALL_HINT, BrokerNotFoundError, LocalBroker, find_mosquitto
from broker.binary import ENV_VAR


@pytest.fixture
def fake_mosquitto(tmp_path: Path) -> Path:
    exe = tmp_path / "bin" / "mosquitto"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return exe


def assert_install_hint(message: str) -> None:
    assert "sudo apt-get install mosquitto" in message
    assert "brew install mosquitto" in message
    assert "bash scripts/setup.sh" in message


def test_install_hint_names_every_way_to_install() -> None:
    assert_install_hint(INSTALL_HINT)


def test_explicit_binary_wins(fake_mosquitto: Path) -> None:
    env = {ENV_VAR: "/nonexistent/other", "PATH": ""}
    assert find_mosquitto(str(fake_mosquitto), env=env, fallbacks=()) == str(fake_mosquitto)


def test_env_var_before_path(fake_mosquitto: Path, tmp_path: Path) -> None:
    env = {ENV_VAR: str(fake_mosquitto), "PATH": str(tmp_path)}
    assert find_mosquitto(env=env, fallbacks=()) == str(fake_mosquitto)


def test_path_before_fallbacks(fake_mosquitto: Path) -> None:
    env = {"PATH": str(fake_mosquitto.parent)}
    assert find_mosquitto(env=env, fallbacks=("/nonexistent",)) == str(fake_mosquitto)


def test_fallbacks_last(fake_mosquitto: Path, tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path / "empty")}
    assert find_mosquitto(env=env, fallbacks=("/nonexistent", str(fake_mosquitto))) == str(
        fake_mosquitto
    )


def test_nothing_found_raises_with_hint(tmp_path: Path) -> None:
    with pytest.raises(BrokerNotFoundError) as info:
        find_mosquitto(env={"PATH": str(tmp_path)}, fallbacks=(str(tmp_path / "mosquitto"),))
    assert_install_hint(str(info.value))


def test_unusable_explicit_binary_does_not_fall_back(tmp_path: Path) -> None:
    not_executable = tmp_path / "mosquitto"
    not_executable.write_text("")
    with pytest.raises(BrokerNotFoundError, match="binary argument") as info:
        find_mosquitto(str(not_executable))
    assert_install_hint(str(info.value))


def test_unusable_env_var_does_not_fall_back(tmp_path: Path) -> None:
    env = {ENV_VAR: str(tmp_path / "missing"), "PATH": os.environ.get("PATH", "")}
    with pytest.raises(BrokerNotFoundError, match=ENV_VAR):
        find_mosquitto(env=env)


def test_local_broker_with_missing_binary_raises_and_leaves_nothing(tmp_path: Path) -> None:
    broker = LocalBroker(binary=str(tmp_path / "no-such-mosquitto"))
    with pytest.raises(BrokerNotFoundError) as info:
        broker.start()
    assert_install_hint(str(info.value))
    assert not broker.is_running
    assert broker.workdir is None


def test_missing_binary_via_env_in_context_manager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "no-such-mosquitto"))
    with pytest.raises(BrokerNotFoundError), LocalBroker():
        pytest.fail("the body must not run")
