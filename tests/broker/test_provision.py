"""Rendering the production setup: mosquitto.conf, the ACL, client configs, the setup record."""

from __future__ import annotations

import tomllib
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.provision import (
    EDGE_USER,
    INSPECTOR_USER,
    PACKET_OVERHEAD,
    BrokerSetup,
    ProvisionError,
    device_client,
    edge_client,
    inspector_client,
    parse_setup,
    render_acl,
    render_mosquitto_conf,
    render_setup,
)
from schemas.config_file import toml_value
from schemas.topics import (
    DEVICE_TO_EDGE,
    EDGE_TO_DEVICE,
    SERVE_DEVICE_READS,
    SERVE_DEVICE_WRITES,
    DeviceChannel,
    ServeChannel,
)
from transport import MqttSettings


def make_setup(**changes) -> BrokerSetup:
    values = dict(
        hosts=("broker.lan", "127.0.0.1"),
        mount_path=PurePosixPath("/mosquitto/config"),
        max_payload_bytes=16 * 1024 * 1024,
    )
    return BrokerSetup(**{**values, **changes})


def directives(text: str) -> list[tuple[str, str]]:
    """(name, value) per non-comment line, in order."""
    out = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition(" ")
            out.append((name, value))
    return out


def listener_blocks(text: str) -> dict[str, dict[str, str]]:
    """Directives after each listener line, keyed by that line's arguments."""
    blocks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for name, value in directives(text):
        if name == "listener":
            current = blocks.setdefault(value, {})
        elif current is not None:
            current[name] = value
    return blocks


def test_conf_has_a_tls_and_a_loopback_listener_and_no_anonymous_access():
    text = render_mosquitto_conf(make_setup())
    settings = dict(directives(text))
    assert settings["per_listener_settings"] == "false"
    assert settings["allow_anonymous"] == "false"
    assert settings["password_file"] == "/mosquitto/config/passwd"
    assert settings["acl_file"] == "/mosquitto/config/acl"
    assert settings["set_tcp_nodelay"] == "true"
    assert settings["max_packet_size"] == str(16 * 1024 * 1024 + PACKET_OVERHEAD)
    assert int(settings["max_queued_messages"]) > 0
    assert int(settings["max_queued_bytes"]) > 0
    assert int(settings["max_inflight_messages"]) > 0
    assert settings["persistence"] == "false"
    assert "user" not in settings  # mosquitto's default account unless asked

    blocks = listener_blocks(text)
    assert set(blocks) == {"8883", "1883 127.0.0.1"}
    tls = blocks["8883"]
    assert tls["cafile"] == "/mosquitto/config/certs/ca.crt"
    assert tls["certfile"] == "/mosquitto/config/certs/server.crt"
    assert tls["keyfile"] == "/mosquitto/config/certs/server.key"
    assert tls["tls_version"] == "tlsv1.2"
    assert "require_certificate" not in tls
    # Nothing TLS-related leaks into the loopback listener.
    assert not {"cafile", "certfile", "keyfile"} & set(blocks["1883 127.0.0.1"])


def test_conf_options():
    text = render_mosquitto_conf(
        make_setup(
            tls_port=9883, local_port=2883, bind="10.0.0.2", require_client_cert=True,
            run_as="root", persistence_dir=PurePosixPath("/mosquitto/data"),
        )
    )  # fmt: skip
    blocks = listener_blocks(text)
    assert set(blocks) == {"9883 10.0.0.2", "2883 127.0.0.1"}
    assert blocks["9883 10.0.0.2"]["require_certificate"] == "true"
    settings = dict(directives(text))
    assert settings["persistence"] == "true"
    assert settings["persistence_location"] == "/mosquitto/data/"  # mosquitto needs the slash
    assert settings["user"] == "root"


def test_queue_limit_holds_several_of_the_largest_messages():
    big = make_setup(max_payload_bytes=200 * 1024 * 1024)
    assert big.max_queued_bytes >= 4 * big.max_packet_size


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hosts": ()}, "at least one host"),
        ({"tls_port": 0}, "tls_port 0"),
        ({"local_port": 70000}, "local_port 70000"),
        ({"tls_port": 1883}, "share port 1883"),
        ({"bind": "all"}, "bind must be an IP address"),
        ({"prefix": "ares/#"}, "prefix"),
        ({"max_payload_bytes": 10}, "max_payload_bytes 10"),
        ({"max_payload_bytes": 268_435_455}, "MQTT's packet limit"),
        ({"mount_path": PurePosixPath("config")}, "mount_path must be an absolute"),
        ({"mount_path": PurePosixPath("/a\nlistener 1")}, "line break"),
        ({"hosts": ("ok", "bad\nhost")}, "line break"),
        ({"run_as": "two words"}, "invalid run_as"),
        ({"version": 2}, "version 2"),
    ],
)
def test_bad_setups_are_refused_naming_the_value(changes, message):
    with pytest.raises(ProvisionError, match=message):
        make_setup(**changes)


def acl_rules(text: str) -> dict[str, list[tuple[str, str]]]:
    """Rules per user ('' for patterns, which apply to everyone)."""
    rules: dict[str, list[tuple[str, str]]] = {}
    user = None
    for name, value in directives(text):
        if name == "user":
            user = value
            rules.setdefault(user, [])
        elif name == "topic":
            assert user is not None, "a topic line before any user would be for anonymous clients"
            access, topic = value.split(" ", 1)
            rules[user].append((access, topic))
        elif name == "pattern":
            access, topic = value.split(" ", 1)
            rules.setdefault("", []).append((access, topic))
    return rules


def test_acl_gives_each_party_what_the_protocol_needs():
    rules = acl_rules(render_acl("site/ares"))
    assert rules[EDGE_USER] == [("readwrite", "site/ares/#")]
    assert rules[INSPECTOR_USER] == [
        ("deny", "site/ares/dev/inspector/#"),  # the device patterns must not reach it
        ("read", "site/ares/#"),
        ("read", "$SYS/#"),
    ]
    patterns = rules[""]
    serving = {t for _, t in patterns if "/serve" in t}
    writes = {t for a, t in patterns if a == "write"} - serving
    reads = {t for a, t in patterns if a == "read"} - serving
    assert writes == {f"site/ares/dev/%u/{c.value}" for c in DEVICE_TO_EDGE}
    own_status = "site/ares/dev/%u/status"  # read back to correct a stale offline
    assert reads == {f"site/ares/dev/%u/{c.value}" for c in EDGE_TO_DEVICE} | {
        "site/ares/edge/#",
        own_status,
    }
    # Every channel is covered once in the direction the contract says (status: both ways).
    assert len(writes) + len(reads) - 2 == len(DeviceChannel)
    # Serving: the device's channels as the contract says; its application (as the device)
    # writes requests and reads answers; the serving edge's status and plan for all.
    serve_writes = {t for a, t in patterns if a == "write" and t in serving}
    serve_reads = {t for a, t in patterns if a == "read" and t in serving}
    assert serve_writes == {
        f"site/ares/dev/%u/{c.value}" for c in (*SERVE_DEVICE_WRITES, ServeChannel.REQUEST)
    }
    assert serve_reads == {
        f"site/ares/dev/%u/{c.value}" for c in (*SERVE_DEVICE_READS, ServeChannel.ANSWER)
    } | {"site/ares/serve/#"}
    # The device's MQTT will and retained status need write on status.
    assert "site/ares/dev/%u/status" in writes
    assert not any(a == "readwrite" for a, _ in patterns)


def test_client_configs_validate_as_mqtt_settings():
    setup = make_setup(tls_port=8884, hosts=("::1", "localhost"))
    edge = edge_client(setup, "edge-secret")
    device = device_client(
        setup, "pi-1", "dev-secret", ca_file=PurePosixPath("/etc/ares/ca.crt"), client_cert=True
    )
    inspector = inspector_client(
        setup, "insp-secret", ca_file="/srv/broker/certs/ca.crt", cert_file=None, key_file=None
    )
    parsed = {name: tomllib.loads(c.to_toml(["a comment"])) for name, c in
              {"edge": edge, "device": device, "inspector": inspector}.items()}  # fmt: skip
    mqtt = {name: MqttSettings(**doc["mqtt"]) for name, doc in parsed.items()}

    assert mqtt["edge"].url == "mqtt://127.0.0.1:1883"
    assert mqtt["edge"].username == EDGE_USER
    assert mqtt["edge"].ca_file is None
    assert mqtt["edge"].password is not None
    assert mqtt["edge"].password.get_secret_value() == "edge-secret"

    assert parsed["device"]["device_id"] == "pi-1"
    assert mqtt["device"].url == "mqtts://[::1]:8884"
    assert mqtt["device"].username == "pi-1"
    assert str(mqtt["device"].ca_file) == "/etc/ares/ca.crt"
    assert str(mqtt["device"].cert_file) == "/etc/ares/pi-1.crt"
    assert str(mqtt["device"].key_file) == "/etc/ares/pi-1.key"

    assert mqtt["inspector"].username == INSPECTOR_USER
    assert str(mqtt["inspector"].ca_file) == "/srv/broker/certs/ca.crt"
    for settings in mqtt.values():
        assert settings.max_payload_bytes == setup.max_payload_bytes
        assert settings.prefix == setup.prefix
    assert "device_id" not in parsed["edge"]


def test_setup_record_round_trips():
    setup = make_setup(
        bind="::", require_client_cert=True, run_as="mosquitto",
        persistence_dir=PurePosixPath("/data"), prefix="x/y",
    )  # fmt: skip
    assert parse_setup(render_setup(setup)) == setup
    plain = make_setup()
    assert parse_setup(render_setup(plain)) == plain


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hosts = [", "not valid TOML"),
        ('hosts = ["a"]\nmount_path = "/x"\nmax_payload_bytes = 9999\ncolour = 1', "unknown"),
        ('hosts = ["a"]\nmount_path = "/x"', "lacks"),
        ('hosts = ["a"]\nmount_path = "/x"\nmax_payload_bytes = true', "wrong type"),
        ('hosts = [1]\nmount_path = "/x"\nmax_payload_bytes = 9999', "list of strings"),
    ],
)
def test_bad_setup_records_are_refused(text, message):
    with pytest.raises(ProvisionError, match=message):
        parse_setup(text)


@given(st.text())
def test_toml_strings_round_trip(text):
    assert tomllib.loads(f"v = {toml_value(text)}")["v"] == text


def test_toml_values():
    doc = tomllib.loads(
        f"a = {toml_value(True)}\nb = {toml_value(5)}\nc = {toml_value(('x', 'y'))}\n"
        f"d = {toml_value(PurePosixPath('/p'))}"
    )
    assert doc == {"a": True, "b": 5, "c": ["x", "y"], "d": "/p"}
    with pytest.raises(TypeError):
        toml_value(object())
