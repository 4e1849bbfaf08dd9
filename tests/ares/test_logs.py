"""Log lines for people, or one JSON object per line for collectors."""

from __future__ import annotations

import json
import logging

import pytest

from runtime import logs


@pytest.fixture(autouse=True)
def restore_logging():
    yield
    logging.basicConfig(handlers=[logging.NullHandler()], force=True)


def test_json_lines(capsys):
    logs.setup_logging("INFO", "pi-1", "json")
    log = logging.getLogger("device_agent.agent")
    log.info("round %d done", 3)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("x").debug("not shown at INFO")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "round 3 done"
    assert first["level"] == "INFO"
    assert first["service"] == "pi-1"
    assert first["logger"] == "device_agent.agent"
    assert first["ts"].endswith("+00:00")
    assert "RuntimeError: boom" in second["exception"]


def test_setting_up_again_replaces_the_handler(capsys):
    logs.setup_logging("INFO", "", "text")
    logs.setup_logging("INFO", "pi-2", "text")  # the device id becomes known later
    logging.getLogger("a").warning("hello")
    err = capsys.readouterr().err
    assert err.count("hello") == 1
    assert "pi-2 WARNING a: hello" in err


def test_format_from_the_environment(monkeypatch):
    monkeypatch.setenv("ARES_LOG_FORMAT", "JSON")
    assert logs.default_format() == "json"
    monkeypatch.setenv("ARES_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="text or json"):
        logs.default_format()
