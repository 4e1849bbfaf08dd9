"""BrokerConfig validation and render_config output (pure, no process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import BrokerConfig, render_config
from broker.config import MIB, MQTT_MAX_PACKET_SIZE


def directives(text: str) -> list[tuple[str, str]]:
    """(option, value) pairs of a mosquitto.conf, comments and blank lines dropped."""
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition(" ")
            out.append((key, value))
    return out


def options(text: str) -> dict[str, str]:
    pairs = [p for p in directives(text) if p[0] != "log_type"]
    assert len({k for k, _ in pairs}) == len(pairs), "an option appears twice"
    return dict(pairs)


def test_defaults_render_every_required_option() -> None:
    text = render_config(BrokerConfig(port=18830))
    opts = options(text)
    assert opts["per_listener_settings"] == "false"
    assert opts["listener"] == "18830 127.0.0.1"
    assert opts["allow_anonymous"] == "true"
    assert opts["set_tcp_nodelay"] == "true"
    assert opts["max_packet_size"] == str(64 * MIB)
    assert opts["max_queued_messages"] == "1000"
    assert opts["max_queued_bytes"] == str(256 * MIB)
    assert opts["max_inflight_messages"] == "20"
    assert opts["persistence"] == "false"
    assert opts["log_dest"] == "stderr"
    assert opts["connection_messages"] == "true"
    assert [v for k, v in directives(text) if k == "log_type"] == ["error", "warning", "notice"]
    for absent in ("persistence_location", "password_file", "acl_file", "user"):
        assert absent not in opts
    assert text.endswith("\n")


def test_every_non_obvious_line_has_a_comment() -> None:
    text = render_config(BrokerConfig(port=1884))
    lines = text.splitlines()
    for option in ("set_tcp_nodelay", "max_packet_size", "max_inflight_messages", "listener"):
        index = next(i for i, line in enumerate(lines) if line.startswith(option + " "))
        assert lines[index - 1].startswith("#"), option


def test_custom_values_are_rendered() -> None:
    cfg = BrokerConfig(
        host="0.0.0.0",
        port=2000,
        max_packet_size=1024,
        max_queued_messages=5,
        max_queued_bytes=0,
        max_inflight_messages=1,
        persistence=True,
        persistence_dir=Path("/var/lib/ares broker"),
        log_types=("all",),
        allow_anonymous=False,
        password_file=Path("/etc/ares/passwd"),
        acl_file=Path("/etc/ares/acl"),
        run_as_user="root",
    )
    text = render_config(cfg)
    opts = options(text)
    assert opts["listener"] == "2000 0.0.0.0"
    assert opts["max_packet_size"] == "1024"
    assert opts["max_queued_messages"] == "5"
    assert opts["max_queued_bytes"] == "0"
    assert opts["max_inflight_messages"] == "1"
    assert opts["persistence"] == "true"
    assert opts["persistence_location"] == "/var/lib/ares broker"
    assert opts["allow_anonymous"] == "false"
    assert opts["password_file"] == "/etc/ares/passwd"
    assert opts["acl_file"] == "/etc/ares/acl"
    assert opts["user"] == "root"
    assert [v for k, v in directives(text) if k == "log_type"] == ["all"]


def test_only_mosquitto_2_options() -> None:
    # Options removed or deprecated in 2.x must not appear (2.x refuses some of them).
    keys = {k for k, _ in directives(render_config(BrokerConfig(port=1884, persistence=True)))}
    assert not keys & {"port", "bind_address", "message_size_limit", "max_inflight_bytes"}


def test_port_zero_cannot_be_rendered() -> None:
    with pytest.raises(ValueError, match="concrete port"):
        render_config(BrokerConfig())


@pytest.mark.parametrize("size", [0, 19, MQTT_MAX_PACKET_SIZE + 1])
def test_max_packet_size_bounds(size: int) -> None:
    with pytest.raises(ValueError, match="max_packet_size"):
        BrokerConfig(max_packet_size=size)


def test_max_packet_size_limits_accepted() -> None:
    assert BrokerConfig(max_packet_size=MQTT_MAX_PACKET_SIZE).max_packet_size == 268_435_455
    assert BrokerConfig(max_packet_size=20).max_packet_size == 20


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("port", -1, "port"),
        ("port", 65536, "port"),
        ("host", "", "host"),
        ("max_queued_messages", -1, "max_queued_messages"),
        ("max_queued_bytes", -1, "max_queued_bytes"),
        ("max_inflight_messages", -1, "max_inflight_messages"),
        ("log_types", (), "log_types"),
        ("log_types", ("error", "verbose"), "unknown log types"),
        ("host", "127.0.0.1\nallow_anonymous true", "line break"),
        ("acl_file", Path("/tmp/x\nuser root"), "line break"),
        ("run_as_user", "", "run_as_user"),
    ],
)
def test_invalid_values_are_rejected(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BrokerConfig(**{field: value})  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    cfg = BrokerConfig()
    with pytest.raises(AttributeError):
        cfg.port = 5  # type: ignore[misc]
