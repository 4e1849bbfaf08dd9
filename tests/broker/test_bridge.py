"""Rendering a site broker's bridge and the core's ACL for it (pure, no broker)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from broker.bridge import (
    DEVICE_UP,
    EDGE_DOWN,
    SITE_LOCAL,
    BridgeError,
    BridgeTiming,
    Direction,
    SiteBridge,
    SiteRecord,
    bridge_topics,
    bridge_user,
    parse_site_devices,
    parse_site_record,
    render_bridge_acl,
    render_bridge_section,
    render_core_acl,
    render_site_devices,
    render_site_record,
)
from broker.provision import render_acl
from schemas.topics import DeviceChannel, ServeChannel
from tests.broker.test_provision import acl_rules, directives


def make_bridge(**changes) -> SiteBridge:
    values = dict(
        site="hall-a",
        prefix="plant/v1",
        core_host="core.example.lan",
        core_port=8883,
        password="s3cret-token",
        cafile=PurePosixPath("/mosquitto/config/certs/core-ca.crt"),
    )
    return SiteBridge(**{**values, **changes})


def topic_lines(text: str) -> list[tuple[str, str, str]]:
    """(topic, direction, qos) of every ``topic`` line."""
    out = []
    for name, value in directives(text):
        if name == "topic":
            topic, direction, qos = value.split(" ")
            out.append((topic, direction, qos))
    return out


def test_every_channel_has_exactly_one_place():
    """A new channel cannot be forgotten: it must be up, down or local to the site."""
    every = [*DeviceChannel, *ServeChannel]
    placed = [*DEVICE_UP, *EDGE_DOWN, *SITE_LOCAL]
    assert sorted(placed) == sorted(every)


def test_each_device_channel_goes_the_way_its_publisher_says():
    lines = topic_lines(render_bridge_section(make_bridge(), ["pi-2", "pi-1"]))
    directions = {topic: direction for topic, direction, _ in lines}
    for device in ("pi-1", "pi-2"):
        for channel in ("hello", "status", "telemetry", "act", "weights"):
            assert directions[f"plant/v1/dev/{device}/{channel}"] == "out"
        for channel in ("ctrl", "grad", "error"):
            assert directions[f"plant/v1/dev/{device}/{channel}"] == "in"
        for channel in ("serve/hello", "serve/status", "serve/telemetry", "serve/act"):
            assert directions[f"plant/v1/dev/{device}/{channel}"] == "out"
        for channel in ("serve/result", "serve/ctrl"):
            assert directions[f"plant/v1/dev/{device}/{channel}"] == "in"
        # Between the device and its application at the site: never on the bridge.
        for channel in ("serve/request", "serve/answer"):
            assert f"plant/v1/dev/{device}/{channel}" not in directions
    assert directions["plant/v1/edge/#"] == "in"
    assert directions["plant/v1/serve/#"] == "in"
    # Exactly these: no `both`, QoS 1 everywhere, no wildcard over devices, nothing else.
    assert len(lines) == len(directions) == 2 * (len(DEVICE_UP) + len(EDGE_DOWN)) + 2
    assert {d for _, d, _ in lines} == {"in", "out"}
    assert {q for _, _, q in lines} == {"1"}
    assert not any("+" in t or t == "#" or t.startswith("$") for t, _, _ in lines)
    assert all(t.startswith("plant/v1/") for t, _, _ in lines)


def test_broadcasts_come_last_and_devices_in_name_order():
    topics = bridge_topics("ares/v1", ["b", "a", "a"])
    assert [t.pattern for t in topics[-2:]] == ["ares/v1/edge/#", "ares/v1/serve/#"]
    devices = [t.pattern.split("/")[3] for t in topics[:-2]]
    assert devices == sorted(devices)
    assert devices.count("a") == len(DEVICE_UP) + len(EDGE_DOWN)  # duplicates collapse
    assert bridge_topics("ares/v1", []) == topics[-2:]


def test_connection_block_sets_tls_session_and_timing():
    bridge = make_bridge(timing=BridgeTiming(keepalive_s=20, restart_base_s=3, restart_cap_s=9))
    settings = dict(directives(render_bridge_section(bridge, ["pi-1"])))
    assert settings["connection"] == "bridge@hall-a"
    assert settings["address"] == "core.example.lan:8883"
    assert settings["bridge_cafile"] == "/mosquitto/config/certs/core-ca.crt"
    assert settings["bridge_tls_version"] == "tlsv1.2"
    assert settings["bridge_insecure"] == "false"
    assert "bridge_certfile" not in settings
    assert settings["remote_username"] == "bridge@hall-a"
    assert settings["remote_password"] == "s3cret-token"
    # A fixed client id and persistent sessions on both sides: QoS 1 queues across a cut.
    assert settings["remote_clientid"] == "bridge@hall-a"
    assert settings["cleansession"] == "false"
    assert settings["local_cleansession"] == "false"
    assert settings["start_type"] == "automatic"
    assert settings["keepalive_interval"] == "20"
    assert settings["restart_timeout"] == "3 9"
    assert settings["notifications"] == "true"
    assert settings["notifications_local_only"] == "false"
    assert settings["notification_topic"] == "plant/v1/bridge/hall-a/state"
    assert settings["try_private"] == "true"
    assert settings["bridge_outgoing_retain"] == "true"


def test_client_certificate_lines_when_the_core_requires_one():
    bridge = make_bridge(
        certfile=PurePosixPath("/c/certs/bridge.crt"), keyfile=PurePosixPath("/c/certs/bridge.key")
    )
    settings = dict(directives(render_bridge_section(bridge, [])))
    assert settings["bridge_certfile"] == "/c/certs/bridge.crt"
    assert settings["bridge_keyfile"] == "/c/certs/bridge.key"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"site": "a/b"}, "invalid site name"),
        ({"site": "bridge@x"}, "invalid site name"),
        ({"prefix": "a/#"}, "prefix"),
        ({"core_port": 0}, "core port 0"),
        ({"core_host": "core\nlistener 1"}, "without spaces"),
        ({"password": "two words"}, "without spaces"),
        ({"password": ""}, "non-empty"),
        ({"cafile": PurePosixPath("ca.crt")}, "absolute"),
        ({"cafile": PurePosixPath("/a b/ca.crt")}, "white space"),
        ({"certfile": PurePosixPath("/c.crt")}, "both certfile and keyfile"),
    ],
)
def test_bad_bridges_are_refused_naming_the_value(changes, message):
    with pytest.raises(BridgeError, match=message):
        make_bridge(**changes)


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        ({"keepalive_s": 4}, "keepalive 4"),
        ({"restart_base_s": 0}, "base 0"),
        ({"restart_base_s": 10, "restart_cap_s": 5}, "cap 5"),
    ],
)
def test_bad_timings_are_refused(timing, message):
    with pytest.raises(BridgeError, match=message):
        BridgeTiming(**timing)


def test_core_acl_gives_each_bridge_exactly_what_it_forwards():
    sites = {"hall-a": ["pi-1", "pi-2"], "farm": ["cow-7"]}
    text = render_core_acl("ares/v1", sites)
    assert text.startswith(render_acl("ares/v1"))  # a single broker's rules, unchanged
    rules = acl_rules(text)
    for site, devices in sites.items():
        forwarded = bridge_topics("ares/v1", devices)
        expected = [("write", f"ares/v1/bridge/{site}/state")]
        expected += [("write", t.pattern) for t in forwarded if t.direction is Direction.OUT]
        expected += [("read", t.pattern) for t in forwarded if t.direction is Direction.IN]
        assert rules[bridge_user(site)] == expected
    # No bridge may touch another site's devices.
    farm = {topic for _, topic in rules["bridge@farm"]}
    assert not any("pi-1" in t or "pi-2" in t for t in farm)


def test_core_acl_without_sites_is_the_single_brokers():
    assert render_core_acl("ares/v1", {}) == render_acl("ares/v1")


def test_bridge_acl_block_starts_with_its_user():
    block = render_bridge_acl("ares/v1", "farm", [])
    assert directives(block)[0] == ("user", "bridge@farm")


def test_site_record_round_trips():
    record = SiteRecord(
        site="hall-a",
        core_dir=Path("/srv/ares/core"),
        core_host="10.0.0.1",
        core_port=9883,
        timing=BridgeTiming(30, 5, 60),
    )
    assert parse_site_record(render_site_record(record)) == record


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("site = [", "not valid TOML"),
        ('site = "a"', "lacks"),
        ("colour = 1", "unknown"),
    ],
)
def test_bad_site_records_are_refused(text, message):
    with pytest.raises(BridgeError, match=message):
        parse_site_record(text)


def test_site_record_types_are_checked():
    good = render_site_record(SiteRecord(site="s", core_dir=Path("/c"), core_host="h", core_port=1))
    with pytest.raises(BridgeError, match="core_port has the wrong type"):
        parse_site_record(good.replace("core_port = 1", "core_port = true"))
    with pytest.raises(BridgeError, match="absolute"):
        parse_site_record(good.replace('core_dir = "/c"', 'core_dir = "c"'))


def test_site_devices_round_trip_and_are_checked():
    assert parse_site_devices(render_site_devices("farm", ["b", "a"])) == ("farm", ("a", "b"))
    with pytest.raises(BridgeError, match="invalid device id"):
        parse_site_devices('site = "farm"\ndevices = ["a/b"]')
    with pytest.raises(BridgeError, match="exactly"):
        parse_site_devices('site = "farm"')
