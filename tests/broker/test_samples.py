"""The shipped deployment samples: mosquitto.conf loads, and acl.sample confines devices."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import aiomqtt
import pytest

import broker
from broker import BrokerConfig, LocalBroker, find_mosquitto, free_port, probe_mqtt
from broker.probe import connect_packet, parse_connack
from broker.provision import render_acl

pytestmark = pytest.mark.broker

SAMPLES = Path(broker.__file__).parent
USERS = ("edge@ares", "inspector@ares", "d1", "d2")
NOT_AUTHORIZED = 5


def password_line(user: str, password: str) -> str:
    """A mosquitto_passwd-compatible entry ($7$: PBKDF2-SHA512, 101 iterations)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return f"{user}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "ares.passwd"
    path.write_text("".join(password_line(u, f"pw-{u}") for u in USERS))
    return path


def client(b: LocalBroker, user: str) -> aiomqtt.Client:
    return aiomqtt.Client(b.host, b.port, username=user, password=f"pw-{user}", timeout=5.0)


async def collect_until(c: aiomqtt.Client, sentinel: bytes) -> list[tuple[str, bytes]]:
    """Messages received up to and including the one whose payload is ``sentinel``."""
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(5.0):
        async for m in c.messages:
            assert isinstance(m.payload, bytes)
            got.append((m.topic.value, m.payload))
            if m.payload == sentinel:
                return got
    raise AssertionError("unreachable")


def patterns(acl: str) -> set[str]:
    return {line for line in acl.splitlines() if line.startswith("pattern ")}


def test_acl_sample_grants_devices_what_the_generated_acl_grants() -> None:
    """Every device channel of the wire contract (serving's included) is in the sample."""
    assert patterns((SAMPLES / "acl.sample").read_text()) == patterns(render_acl())


async def test_acl_sample_confines_each_device(password_file: Path) -> None:
    cfg = BrokerConfig(
        allow_anonymous=False, password_file=password_file, acl_file=SAMPLES / "acl.sample"
    )
    async with LocalBroker(cfg) as b:
        assert probe_mqtt(b.host, b.port) == NOT_AUTHORIZED  # no anonymous access
        async with (
            client(b, "edge@ares") as edge,
            client(b, "inspector@ares") as inspector,
            client(b, "d1") as d1,
            client(b, "d2") as d2,
        ):
            await edge.subscribe("ares/v1/dev/#", qos=1)
            await inspector.subscribe("ares/v1/#", qos=1)
            for dev in (d1, d2):
                # Devices try to read more than their own subtree; the ACL filters delivery.
                await dev.subscribe("ares/v1/dev/#", qos=1)
                await dev.subscribe("ares/v1/edge/#", qos=1)

            # Device -> edge: own topics pass, another device's and the edge's do not.
            await d1.publish("ares/v1/dev/d1/act", b"d1-act", qos=1)
            await d1.publish("ares/v1/dev/d2/act", b"d1-posing-as-d2", qos=1)
            await d1.publish("ares/v1/dev/d1/grad", b"d1-writes-grad", qos=1)
            await d1.publish("ares/v1/edge/plan", b"d1-writes-plan", qos=1)
            await inspector.publish("ares/v1/dev/d1/grad", b"inspector-writes", qos=1)
            await d2.publish("ares/v1/dev/d2/hello", b"d2-done", qos=1)
            assert await collect_until(edge, b"d2-done") == [
                ("ares/v1/dev/d1/act", b"d1-act"),
                ("ares/v1/dev/d2/hello", b"d2-done"),
            ]

            # Edge -> device: each device reads only its own ctrl/grad/error and edge/#.
            await edge.publish("ares/v1/dev/d2/grad", b"grad-for-d2", qos=1)
            await edge.publish("ares/v1/dev/d1/grad", b"grad-for-d1", qos=1)
            await edge.publish("ares/v1/edge/plan", b"plan", qos=1, retain=True)
            assert await collect_until(d1, b"plan") == [
                ("ares/v1/dev/d1/grad", b"grad-for-d1"),
                ("ares/v1/edge/plan", b"plan"),
            ]
            assert await collect_until(d2, b"plan") == [
                ("ares/v1/dev/d2/grad", b"grad-for-d2"),
                ("ares/v1/edge/plan", b"plan"),
            ]

            # The inspector saw every message that got through, and nothing else.
            seen = await collect_until(inspector, b"plan")
            assert [p for _, p in seen] == [
                b"d1-act",
                b"d2-done",
                b"grad-for-d2",
                b"grad-for-d1",
                b"plan",
            ]

        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(b.host, b.port, username="d1", password="wrong"):
                pass


def _make_certificates(directory: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
    args += ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    args += ["-keyout", str(directory / "server.key"), "-out", str(directory / "server.crt")]
    subprocess.run([openssl, *args], check=True, capture_output=True)
    shutil.copy(directory / "server.crt", directory / "ca.crt")


def test_sample_mosquitto_conf_loads_and_refuses_anonymous(
    tmp_path: Path, password_file: Path
) -> None:
    _make_certificates(tmp_path)
    shutil.copy(SAMPLES / "acl.sample", tmp_path / "ares.acl")
    assert password_file == tmp_path / "ares.passwd"  # where the sample expects it
    (tmp_path / "data").mkdir()
    tls_port, local_port = free_port(), free_port()
    text = (SAMPLES / "mosquitto.conf").read_text()
    text = text.replace("/etc/mosquitto/certs/", f"{tmp_path}/")
    text = text.replace("/etc/mosquitto/", f"{tmp_path}/")
    text = text.replace("/var/lib/mosquitto/", f"{tmp_path}/data/")
    text = text.replace("/var/log/mosquitto/mosquitto.log", f"{tmp_path}/mosquitto.log")
    text = re.sub(r"^listener 8883$", f"listener {tls_port} 127.0.0.1", text, flags=re.M)
    text = re.sub(r"^listener 1883 ", f"listener {local_port} ", text, flags=re.M)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        text += "user root\n"  # as LocalBroker does: the "mosquitto" user can't use tmp_path
    conf = tmp_path / "ares.conf"
    conf.write_text(text)

    proc = subprocess.Popen(
        [find_mosquitto(), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 5.0
        while True:
            assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
            try:
                code = probe_mqtt("127.0.0.1", local_port, timeout=0.5)
                break
            except OSError:
                assert time.monotonic() < deadline, "sample config broker never answered"
                time.sleep(0.02)
        assert code == NOT_AUTHORIZED  # loopback listener up, anonymous refused

        tls = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        with (
            socket.create_connection(("127.0.0.1", tls_port), timeout=5.0) as raw,
            tls.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            sock.sendall(connect_packet("tls-probe"))
            assert parse_connack(sock.recv(4)) == NOT_AUTHORIZED  # TLS listener up
    finally:
        proc.terminate()
        proc.wait(5.0)
