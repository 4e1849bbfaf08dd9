"""The production broker setup (`ares broker init`) running in a real Mosquitto.

Anonymous clients, wrong passwords, untrusted CAs and missing client certificates are refused;
a device can neither publish as another device nor read another device's traffic; and training
over TLS with the ACLs on completes, unaffected by a neighbour trying.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import threading
import tomllib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import aiomqtt
import numpy as np
import paho.mqtt.client as paho
import pytest
import torch
from paho.mqtt.enums import CallbackAPIVersion

from broker import LocalBroker, free_port, probe_mqtt
from broker.pki import issue_client, new_ca
from broker.probe import connect_packet, parse_connack
from broker.provision import EDGE_USER, INSPECTOR_USER, BrokerSetup
from broker.setup_dir import SetupDir
from broker.sizing import frame_sizes, model_spec
from device_agent import DeviceAgent, DeviceSettings
from edge_service import EdgeService, EdgeSettings, RunReport
from schemas import ActivationMeta, DeviceChannel, Topics, encode_frame, to_meta
from schemas.config_file import load_settings
from schemas.topics import ServeChannel
from tests.integration.helpers import device_settings, edge_settings, train
from transport import MqttLink, MqttSettings

pytestmark = pytest.mark.broker

NOT_AUTHORIZED = 5  # MQTT 3.1.1 CONNACK code
PUBACK_NOT_AUTHORIZED = 0x87  # MQTT 5 reason code
DEVICES = ("dev-0", "dev-1")
TOPICS = Topics()


@dataclass
class Secured:
    """A running broker from a generated setup, and everyone's credentials."""

    target: SetupDir
    setup: BrokerSetup
    broker: LocalBroker
    passwords: dict[str, str]

    @property
    def ca_file(self) -> Path:
        return self.target.certs / "ca.crt"

    def tls_context(self, user: str | None = None, ca_file: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(ca_file or self.ca_file))
        cert = self.target.client_file(user or "", ".crt")
        if user is not None and cert.exists():
            context.load_cert_chain(cert, self.target.client_file(user, ".key"))
        return context

    def tls_client(self, user: str, password: str | None = None, **options) -> aiomqtt.Client:
        """A client on the TLS listener, as ``user`` (its own certificate if it has one)."""
        options.setdefault("tls_context", self.tls_context(user))
        return aiomqtt.Client(
            "localhost",
            self.setup.tls_port,
            username=user,
            password=self.passwords[user] if password is None else password,
            identifier=f"test-{user}-{os.urandom(3).hex()}",
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=5.0,
            **options,
        )

    def local_client(self, user: str | None, password: str | None = None) -> aiomqtt.Client:
        """A client on the plain loopback listener."""
        if user is not None and password is None:
            password = self.passwords[user]
        return aiomqtt.Client(
            "127.0.0.1", self.setup.local_port, username=user, password=password, timeout=5.0
        )


def make_setup(root: Path, *, require_client_cert: bool = False) -> BrokerSetup:
    return BrokerSetup(
        hosts=("localhost", "127.0.0.1"),
        mount_path=PurePosixPath(root.absolute()),
        max_payload_bytes=frame_sizes(model_spec("small_cnn", "digits"), 32).payload_limit(),
        tls_port=free_port(),
        local_port=free_port(),
        bind="127.0.0.1",  # tests expose nothing to the network
        require_client_cert=require_client_cert,
        # Started as root, mosquitto would switch to "mosquitto", who cannot read 0600 files.
        run_as="root" if os.geteuid() == 0 else None,
    )


async def start_secured(root: Path, *, require_client_cert: bool = False) -> AsyncIterator[Secured]:
    target = SetupDir(root)
    setup = make_setup(root, require_client_cert=require_client_cert)
    target.init(setup)
    # The clients directory stands in for the devices' own (/etc/ares): ca.crt goes there too.
    device_ca = target.clients.absolute() / "ca.crt"
    shutil.copy(target.certs / "ca.crt", device_ca)
    for device in DEVICES:
        target.add_device(device, ca_path=PurePosixPath(device_ca))
    passwords = {}
    for path in target.clients.glob("*.toml"):
        table = tomllib.loads(path.read_text())["mqtt"]
        passwords[table["username"]] = table["password"]
    broker = LocalBroker.from_config_file(target.conf, port=setup.local_port)
    async with broker:
        yield Secured(target, setup, broker, passwords)


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    async for running in start_secured(tmp_path / "broker"):
        yield running


@pytest.fixture
async def mutual(tmp_path: Path) -> AsyncIterator[Secured]:
    async for running in start_secured(tmp_path / "broker", require_client_cert=True):
        yield running


def tls_probe(port: int, context: ssl.SSLContext, server_name: str = "localhost") -> int:
    """An anonymous MQTT CONNECT over TLS; the CONNACK code."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5.0) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as sock,
    ):
        sock.sendall(connect_packet("anonymous-tls-probe"))
        return parse_connack(sock.recv(4))


def puback_reasons(
    s: Secured, user: str, publishes: Sequence[str], timeout_s: float = 5.0
) -> list[int]:
    """Publish QoS 1 on each topic with paho (aiomqtt hides the PUBACK's reason code)."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"paho-{user}", protocol=paho.MQTTv5
    )
    client.username_pw_set(user, s.passwords[user])
    client.tls_set_context(s.tls_context(user))
    connected, done = threading.Event(), threading.Event()
    reasons: dict[int, int] = {}

    def on_connect(client, userdata, flags, reason, properties) -> None:
        if not reason.is_failure:
            connected.set()

    def on_publish(client, userdata, mid, reason, properties) -> None:
        reasons[mid] = reason.value
        if len(reasons) == len(publishes):
            done.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect("localhost", s.setup.tls_port)
    client.loop_start()
    try:
        assert connected.wait(timeout_s), f"{user} could not connect"
        mids = [client.publish(topic, b"probe", qos=1).mid for topic in publishes]
        assert done.wait(timeout_s), "no PUBACK for every publish"
        return [reasons[mid] for mid in mids]
    finally:
        client.disconnect()
        client.loop_stop()


async def received_until(client: aiomqtt.Client, sentinel: bytes) -> list[tuple[str, bytes]]:
    """Messages up to and including the one carrying ``sentinel``."""
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(5.0):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            got.append((message.topic.value, message.payload))
            if message.payload == sentinel:
                return got
    raise AssertionError("the message stream ended")


# --- who may connect -------------------------------------------------------------------------


async def test_anonymous_and_wrong_passwords_are_refused_on_both_listeners(secured: Secured):
    s = secured
    assert probe_mqtt("127.0.0.1", s.setup.local_port) == NOT_AUTHORIZED
    assert await asyncio.to_thread(tls_probe, s.setup.tls_port, s.tls_context()) == NOT_AUTHORIZED
    with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed|[Bb]ad user"):
        async with s.local_client(EDGE_USER, "wrong"):
            pass
    with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed|[Bb]ad user"):
        async with s.tls_client("dev-0", "wrong"):
            pass
    # Plain MQTT on the TLS port gets nowhere: the listener speaks TLS only.
    with pytest.raises((OSError, Exception)):
        await asyncio.to_thread(probe_mqtt, "127.0.0.1", s.setup.tls_port, 2.0)
    # The right credentials get in: the refusals above were about the credentials.
    async with s.local_client(EDGE_USER), s.tls_client("dev-0"), s.tls_client(INSPECTOR_USER):
        pass


async def test_a_client_that_does_not_trust_the_ca_is_refused(secured: Secured, tmp_path: Path):
    port = secured.setup.tls_port
    other = tmp_path / "other-ca.crt"
    other.write_bytes(new_ca("Someone else's CA").cert_pem())
    with pytest.raises(aiomqtt.MqttError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        async with secured.tls_client("dev-0", tls_context=secured.tls_context(ca_file=other)):
            pass
    # Trusting the CA is not enough: the certificate must also carry the name connected to.
    with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname mismatch"):
        await asyncio.to_thread(tls_probe, port, secured.tls_context(), "elsewhere.lan")
    assert (
        await asyncio.to_thread(tls_probe, port, secured.tls_context(), "127.0.0.1")
        == NOT_AUTHORIZED
    )
    # Through the services' own link too: it never connects.
    settings = MqttSettings(
        url=f"mqtts://localhost:{secured.setup.tls_port}", username="dev-0",
        password=secured.passwords["dev-0"], ca_file=other, connect_timeout_s=1.0,
    )  # fmt: skip
    with pytest.raises(Exception, match="no connection"):
        async with MqttLink(settings, "untrusting", []):
            pass


async def test_client_certificates_are_required_when_asked(mutual: Secured, tmp_path: Path):
    s = mutual
    no_cert = ssl.create_default_context(cafile=str(s.ca_file))
    # The broker ends the handshake: an alert or a bare EOF, depending on timing.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.to_thread(tls_probe, s.setup.tls_port, no_cert)
    # A certificate from another CA, with the device's name, is refused too.
    stranger = issue_client(new_ca("Someone else's CA"), "dev-0")
    (tmp_path / "x.crt").write_bytes(stranger.cert_pem())
    (tmp_path / "x.key").write_bytes(stranger.key_pem())
    forged = ssl.create_default_context(cafile=str(s.ca_file))
    forged.load_cert_chain(tmp_path / "x.crt", tmp_path / "x.key")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.to_thread(tls_probe, s.setup.tls_port, forged)
    # With the device's own certificate TLS goes through (then MQTT wants a password).
    assert (
        await asyncio.to_thread(tls_probe, s.setup.tls_port, s.tls_context("dev-0"))
        == NOT_AUTHORIZED
    )
    # And the device connects with the settings its config file gives.
    config = load_settings(DeviceSettings, s.target.client_file("dev-0"))
    assert config.mqtt.cert_file is not None
    async with MqttLink(config.mqtt, "dev-0-mtls", []) as link:
        await link.publish(TOPICS.device("dev-0", DeviceChannel.HELLO), b"{}")


async def test_a_device_added_later_gets_in_after_a_reload(secured: Secured):
    s = secured
    made = s.target.add_device("late-1")
    s.passwords["late-1"] = made.config.password
    with pytest.raises(aiomqtt.MqttError):
        async with s.tls_client("late-1"):
            pass
    s.broker.reload()
    async with asyncio.timeout(5.0):
        while True:
            try:
                async with s.tls_client("late-1"):
                    break
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)


# --- what a connected device may do ----------------------------------------------------------


async def test_a_device_cannot_publish_as_another(secured: Secured):
    s = secured
    act = {d: TOPICS.device(d, DeviceChannel.ACT) for d in DEVICES}
    async with s.local_client(EDGE_USER) as edge, s.tls_client("dev-0") as a:
        await edge.subscribe(TOPICS.all_devices(DeviceChannel.ACT), qos=1)
        await edge.subscribe(TOPICS.all_devices(DeviceChannel.WEIGHTS), qos=1)
        await a.publish(act["dev-1"], b"forged-act", qos=1)
        await a.publish(TOPICS.device("dev-1", DeviceChannel.WEIGHTS), b"forged-weights", qos=1)
        await a.publish(act["dev-0"], b"own-act", qos=1)
        # Only the device's own message arrives; the forged ones were dropped before it.
        assert await received_until(edge, b"own-act") == [(act["dev-0"], b"own-act")]

    # The broker says so in the PUBACK (MQTT 5): not authorised, while its own topic is fine.
    reasons = await asyncio.to_thread(
        puback_reasons, s, "dev-0", [act["dev-1"], TOPICS.edge_status, act["dev-0"]]
    )
    assert reasons[:2] == [PUBACK_NOT_AUTHORIZED, PUBACK_NOT_AUTHORIZED]
    assert reasons[2] < 0x80  # success (0x10: no subscribers)
    # The inspector reads but never writes, not even as a device named after it.
    own = [TOPICS.device(INSPECTOR_USER, c) for c in (DeviceChannel.HELLO, DeviceChannel.ACT)]
    reasons = await asyncio.to_thread(puback_reasons, s, INSPECTOR_USER, [act["dev-0"], *own])
    assert reasons == [PUBACK_NOT_AUTHORIZED] * 3


async def test_a_serving_device_is_confined_to_its_own_serving_topics(secured: Secured):
    """A device (and its application, logged in as it) publishes its own requests, answers
    and activations; never another device's, nor the serving edge's results and plans."""
    channels = (ServeChannel.REQUEST, ServeChannel.ANSWER, ServeChannel.ACT)
    others = [TOPICS.device("dev-1", c) for c in channels]
    forged = [TOPICS.device("dev-0", ServeChannel.RESULT), TOPICS.serve_plan]
    own = [TOPICS.device("dev-0", c) for c in channels]
    reasons = await asyncio.to_thread(puback_reasons, secured, "dev-0", [*others, *forged, *own])
    assert reasons[:5] == [PUBACK_NOT_AUTHORIZED] * 5
    assert all(reason < 0x80 for reason in reasons[5:])


async def test_a_device_cannot_read_another_devices_traffic(secured: Secured):
    s = secured
    async with (
        s.local_client(EDGE_USER) as edge,
        s.tls_client("dev-0") as a,
        s.tls_client("dev-1") as b,
        s.tls_client(INSPECTOR_USER) as inspector,
    ):
        for topic in ("ares/v1/dev/dev-1/ctrl", "ares/v1/dev/dev-1/grad", "ares/v1/dev/#", "#"):
            await a.subscribe(topic, qos=1)  # accepted; delivery is what the ACL filters
        await b.subscribe("ares/v1/dev/dev-1/#", qos=1)
        await inspector.subscribe("ares/v1/#", qos=1)
        for channel in (DeviceChannel.CTRL, DeviceChannel.GRAD, DeviceChannel.ERROR):
            await edge.publish(TOPICS.device("dev-1", channel), f"b-{channel}".encode(), qos=1)
        await edge.publish(TOPICS.device("dev-0", DeviceChannel.GRAD), b"a-grad", qos=1)
        await edge.publish(TOPICS.edge_status, b"status", qos=1, retain=True)

        # Overlapping subscriptions may deliver a message more than once: compare sets.
        seen_by_a = set(await received_until(a, b"status"))
        assert seen_by_a == {
            (TOPICS.device("dev-0", DeviceChannel.GRAD), b"a-grad"),
            (TOPICS.edge_status, b"status"),
        }
        # dev-1 does get its own messages, and the inspector everything.
        seen_by_b = [p for _, p in await received_until(b, b"b-error")]
        assert seen_by_b == [b"b-ctrl", b"b-grad", b"b-error"]
        seen = [p for _, p in await received_until(inspector, b"status")]
        assert seen == [b"b-ctrl", b"b-grad", b"b-error", b"a-grad", b"status"]


# --- training --------------------------------------------------------------------------------


ATTACK_HEAD_START = 20  # messages the neighbour sends before training starts


async def _attack(
    s: Secured, stop: asyncio.Event, underway: asyncio.Event
) -> tuple[int, list[str]]:
    """As dev-0: keep publishing garbage and forged frames on dev-1's topics; listen on them."""
    forged = encode_frame(
        to_meta(ActivationMeta(device_id="dev-1", round=1, seq=0)),
        {"act": np.full((32, 16, 8, 8), np.nan, np.float32), "labels": np.zeros(32, np.int64)},
    )
    victim = [TOPICS.device("dev-1", c) for c in (DeviceChannel.ACT, DeviceChannel.WEIGHTS)]
    sent, overheard = 0, []
    async with s.tls_client("dev-0") as attacker:
        for channel in (DeviceChannel.CTRL, DeviceChannel.GRAD):
            await attacker.subscribe(TOPICS.device("dev-1", channel), qos=1)

        async def listen() -> None:
            async for message in attacker.messages:
                overheard.append(message.topic.value)

        listener = asyncio.create_task(listen())
        try:
            while not stop.is_set():
                for topic in victim:
                    for payload in (b"\x00garbage", forged):
                        await attacker.publish(topic, payload, qos=1)
                        sent += 1
                if sent > ATTACK_HEAD_START:
                    underway.set()  # training starts under an attack already in full swing
                await asyncio.sleep(0.01)
        finally:
            listener.cancel()
    return sent, overheard


async def _train(s: Secured, *, attacked: bool) -> tuple[EdgeService, RunReport, int, list[str]]:
    edge_mqtt = load_settings(EdgeSettings, s.target.client_file("edge")).mqtt
    edge = EdgeService(
        edge_settings(s.broker, mqtt=edge_mqtt, min_devices=2, rounds=2, seed=3,
                      batches_per_round=8)
    )  # fmt: skip
    agents = []
    for index, device in enumerate(DEVICES):
        config = load_settings(DeviceSettings, s.target.client_file(device))
        assert config.mqtt.url.startswith("mqtts://")  # every device goes over TLS
        agents.append(DeviceAgent(device_settings(s.broker, index, 2, mqtt=config.mqtt, seed=3)))
    stop, underway = asyncio.Event(), asyncio.Event()
    attack = asyncio.create_task(_attack(s, stop, underway)) if attacked else None
    if attack is not None:
        async with asyncio.timeout(30):
            await underway.wait()
    try:
        report = await train(edge, agents)
    finally:
        stop.set()
    sent, overheard = await attack if attack is not None else (0, [])
    return edge, report, sent, overheard


async def test_training_over_tls_is_unaffected_by_a_neighbour_trying(secured: Secured):
    s = secured
    edge, report, sent, overheard = await _train(s, attacked=True)
    assert sent > 20  # the neighbour kept trying throughout
    assert overheard == []  # and heard nothing of dev-1's control or gradients
    assert len(report.rounds) == 2
    for round_report in report.rounds:
        for device in DEVICES:
            entry = round_report.devices[device]
            assert (entry.status, entry.batches) == ("ok", 8), (round_report.round, device)
    # Nothing forged reached the edge: no rejection of any kind, no stale traffic.
    assert not {k: v for k, v in report.counters.items() if k.startswith("rejected")}
    assert report.counters.get("stale_messages", 0) == 0
    assert report.counters.get("internal_errors", 0) == 0

    # The same run without the neighbour ends with the same model: nothing it did counted.
    clean_edge, clean_report, _, _ = await _train(s, attacked=False)
    assert [r.devices["dev-1"].batches for r in clean_report.rounds] == [8, 8]
    for name, value in clean_edge.global_state.items():
        torch.testing.assert_close(edge.global_state[name], value, rtol=1e-5, atol=1e-6)
