"""parse_broker_url: the URL forms every ARES component accepts."""

from __future__ import annotations

import pytest

from broker import parse_broker_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1884", ("127.0.0.1", 1884, False)),
        ("mqtts://broker.example:8884", ("broker.example", 8884, True)),
        ("mqtt://edge.local", ("edge.local", 1883, False)),
        ("mqtts://edge.local", ("edge.local", 8883, True)),
        ("mqtt://edge.local/", ("edge.local", 1883, False)),
        ("mqtt://[::1]:1999", ("::1", 1999, False)),
    ],
)
def test_accepts_mqtt_and_mqtts(url: str, expected: tuple[str, int, bool]) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "127.0.0.1:1883",
        "tcp://127.0.0.1:1883",
        "http://127.0.0.1:1883",
        "ws://127.0.0.1:9001",
        "mqtt://",
        "mqtt://:1883",
        "mqtt://host:notaport",
        "mqtt://host:70000",
        "mqtt://host:1883/ares",
        "mqtt://host:1883?tls=1",
        "mqtt://host:1883#frag",
    ],
)
def test_rejects_anything_else_naming_the_url(url: str) -> None:
    with pytest.raises(ValueError, match=r"(?i)invalid broker url") as info:
        parse_broker_url(url)
    assert repr(url) in str(info.value)


@pytest.mark.parametrize("url", ["mqtt://user:secret@host:1883", "mqtts://u@host"])
def test_credentials_in_the_url_are_refused_without_echoing_them(url):
    with pytest.raises(ValueError, match="not in the URL") as err:
        parse_broker_url(url)
    assert "secret" not in str(err.value)


def test_port_zero_is_refused():
    with pytest.raises(ValueError, match="port 0"):
        parse_broker_url("mqtt://host:0")
