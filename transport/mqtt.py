"""A resilient MQTT connection shared by the edge service and the device agents.

``MqttLink`` wraps aiomqtt: it connects, subscribes, and when the connection drops it reconnects
with capped, jittered exponential backoff and subscribes again, while the owner keeps calling
``publish`` (which waits for the connection, bounded by a timeout) and reading ``messages``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from transport.base import Connect, LastWill, LinkError, Message, OnConnect
from transport.shaping import LinkShaper
from transport.tasks import BackgroundTasks, cancel_and_wait
from transport.urls import parse_broker_url

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 2.0  # how long closing a link waits for the broker to see us go
PENDING_CALLS_WARNING = 1000  # in-flight calls before aiomqtt warns; see _make_client


class MqttSettings(BaseModel):
    """How to reach the broker; shared by every service's settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = "mqtt://127.0.0.1:1883"
    prefix: str = "ares/v1"
    username: str | None = None
    password: SecretStr | None = None
    # Or a file holding it (first line), e.g. a systemd credential: keeps it out of configs.
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(default=15, ge=5, le=3600)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    # MQTT 5 only: how long the broker keeps our subscriptions and queued QoS 1 messages.
    session_expiry_s: int = Field(default=300, ge=0)
    publish_timeout_s: float = Field(default=10.0, gt=0)
    # Large payloads get extra publish time at this pessimistic rate (bytes per second).
    publish_min_rate_bps: float = Field(default=100_000.0, gt=0)
    max_payload_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=268_435_455)
    reconnect_min_s: float = Field(default=0.2, gt=0)
    reconnect_max_s: float = Field(default=15.0, gt=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parse_broker_url(url)
        return url

    @model_validator(mode="after")
    def _check_credentials(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give mqtt.password or mqtt.password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password needs mqtt.username")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("mqtt.key_file needs mqtt.cert_file (the client certificate)")
        return self

    def resolved_password(self) -> str | None:
        """The password, read from password_file when that is how it is given."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is None:
            return None
        try:
            lines = self.password_file.read_text().splitlines()
        except OSError as exc:
            raise LinkError(f"cannot read mqtt.password_file {self.password_file}: {exc}") from exc
        if not lines or not lines[0]:
            raise LinkError(f"mqtt.password_file {self.password_file} is empty")
        return lines[0]


def mqtt_connector(settings: MqttSettings, *, shaper: LinkShaper | None = None) -> Connect:
    """The production ``Connect``: links to the broker ``settings`` name (through ``shaper``'s
    emulated rates, if given)."""

    def connect(
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        *,
        will: LastWill | None = None,
        on_connect: OnConnect | None = None,
    ) -> MqttLink:
        return MqttLink(
            settings, client_id, subscriptions, will=will, on_connect=on_connect, shaper=shaper
        )

    return connect


class MqttLink:
    """One client connection kept alive across broker restarts and network faults."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        *,
        will: LastWill | None = None,
        on_connect: OnConnect | None = None,
        shaper: LinkShaper | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._subscriptions = tuple(subscriptions)
        self._will = will
        self._on_connect = on_connect
        self.shaper = shaper  # emulated link rates (token buckets), when no tc is available
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._messages: asyncio.Queue[Message] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self._first_connect = True
        self._background = BackgroundTasks()
        self.connects = 0  # successful connections, reconnects included

    async def __aenter__(self) -> Self:
        self._make_client()  # bad credentials or TLS files fail here, clearly, not in the runner
        if self.settings.ca_file is not None and not parse_broker_url(self.settings.url)[2]:
            log.warning("mqtt.ca_file is set but %s is plain MQTT; use mqtts:// for TLS",
                        self.settings.url)  # fmt: skip
        self._runner = asyncio.create_task(self._run(), name=f"mqtt-link-{self.client_id}")
        try:
            await self.wait_connected(self.settings.connect_timeout_s)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    @property
    def running(self) -> bool:
        """Whether the connection loop lives: it ends only when the link closes (or on a bug)."""
        return self._runner is not None and not self._runner.done()

    async def wait_connected(self, within_s: float) -> None:
        try:
            async with asyncio.timeout(within_s):
                await self._connected.wait()
        except TimeoutError:
            raise LinkError(
                f"no connection to the broker at {self.settings.url} after {within_s:.1f} s"
            ) from None

    async def _connected_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def subscribe(self, subscriptions: Sequence[tuple[str, int]]) -> None:
        new = [s for s in subscriptions if s not in self._subscriptions]
        if not new:
            return
        self._subscriptions = (*self._subscriptions, *new)  # the next connect subscribes them
        await self._change(lambda client: client.subscribe(
            new, timeout=self.settings.connect_timeout_s))  # fmt: skip

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        gone = [f for f in filters if any(topic == f for topic, _ in self._subscriptions)]
        if not gone:
            return
        self._subscriptions = tuple(s for s in self._subscriptions if s[0] not in gone)
        await self._change(lambda client: client.unsubscribe(
            gone, timeout=self.settings.connect_timeout_s))  # fmt: skip

    async def _change(self, change: Callable[[aiomqtt.Client], Awaitable[Any]]) -> None:
        """Tell the broker now, if connected; a reconnect subscribes from the list anyway."""
        client = self._client
        if client is None or not self.is_connected:
            return
        try:
            await change(client)
        except aiomqtt.MqttError as exc:
            if self.is_connected:
                raise LinkError(f"subscriptions not confirmed: {exc}") from exc
            log.debug("subscriptions change lost with the connection (%s): reconnect does it", exc)

    def messages(self) -> AsyncIterator[Message]:
        """Every message on our subscriptions, across reconnects.

        Cancelling a wait for the next message (e.g. by a timeout) loses nothing.
        """
        return _QueueIterator(self._messages)

    async def receive(self) -> Message:
        """The next message (cancellation-safe)."""
        return await self._messages.get()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish, waiting for a connection and retrying across reconnects until the deadline.

        The deadline grows with the payload so a large weight upload on a slow link is not cut
        short. A retry after a lost connection may deliver twice: receivers deduplicate.
        """
        if len(payload) > self.settings.max_payload_bytes:
            # The broker would drop the connection on an oversized packet: refuse it here.
            raise LinkError(
                f"payload of {len(payload)} bytes for {topic} exceeds max_payload_bytes "
                f"{self.settings.max_payload_bytes}"
            )
        if self.shaper is not None:
            await self.shaper.uplink.transfer(len(payload))
        budget = self.settings.publish_timeout_s + len(payload) / self.settings.publish_min_rate_bps
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._connected_within(remaining):
                raise LinkError(f"publish to {topic} did not complete within {budget:.1f} s")
            client = self._client
            if client is None:
                continue
            if await self._publish_once(client, topic, payload, qos, retain, remaining):
                return
            # The connection broke under the publish: wait for the runner to notice, then retry.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 1.0)):
                    await self._disconnected.wait()

    async def _publish_once(
        self,
        client: aiomqtt.Client,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        within_s: float,
    ) -> bool:
        """One attempt on one connection; False if that connection broke first.

        Raced against disconnection: a PUBACK owed by a dead connection never comes, and
        waiting out the whole deadline for it would stall the sender for nothing.
        """
        attempt = asyncio.ensure_future(
            client.publish(topic, payload, qos=qos, retain=retain, timeout=within_s)
        )
        broken = asyncio.ensure_future(self._disconnected.wait())
        try:
            await asyncio.wait({attempt, broken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            broken.cancel()
        if not attempt.done():
            await cancel_and_wait(attempt)
            return False
        try:
            attempt.result()
        except aiomqtt.MqttError as exc:
            log.debug("publish to %s failed (%s); retrying after reconnect", topic, exc)
            return False
        return True

    async def _stop(self) -> None:
        await self._background.drain(0)
        runner, self._runner = self._runner, None
        if runner is not None:
            # Bounded: a broker that never acknowledges our DISCONNECT must not hold us here.
            await cancel_and_wait(runner, within_s=STOP_TIMEOUT_S)

    async def _run(self) -> None:
        attempt = 0
        while True:
            connected = False
            try:
                async with self._make_client() as client:
                    for topic, qos in self._subscriptions:
                        await client.subscribe(topic, qos, timeout=self.settings.connect_timeout_s)
                    self._client = client
                    self._first_connect = False
                    self.connects += 1
                    attempt = 0
                    self._disconnected.clear()
                    self._connected.set()
                    connected = True
                    log.info("%s connected to %s", self.client_id, self.settings.url)
                    if self._on_connect is not None:
                        # Run beside the reader: the callback may wait on replies.
                        self._background.spawn(self._on_connect())
                    async for message in client.messages:
                        converted = _convert(message)
                        if self.shaper is not None:
                            await self.shaper.downlink.transfer(len(converted.payload))
                        self._messages.put_nowait(converted)
            except aiomqtt.MqttError as exc:
                if connected:
                    log.warning("%s lost the broker connection: %s", self.client_id, exc)
                else:  # never got that far: say so, not that a connection was lost
                    log.warning("%s cannot connect to %s: %s", self.client_id,
                                self.settings.url, exc)  # fmt: skip
            finally:
                self._connected.clear()
                self._disconnected.set()
                self._client = None
            delay = min(self.settings.reconnect_max_s, self.settings.reconnect_min_s * 2**attempt)
            attempt += 1
            # Full jitter spreads the reconnects of many devices after a broker restart.
            await asyncio.sleep(random.uniform(delay / 2, delay))

    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        host, port, use_tls = parse_broker_url(s.url)
        v5 = s.protocol == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = s.session_expiry_s
        will = None
        if self._will is not None:
            will = aiomqtt.Will(
                self._will.topic, self._will.payload, qos=1, retain=self._will.retain
            )
        client = aiomqtt.Client(
            host,
            port,
            identifier=self.client_id,
            username=s.username,
            password=s.resolved_password(),
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            # MQTT 5: start clean once per process, then resume the session on reconnects so
            # QoS 1 messages queued while we were away are delivered. 3.1.1 always resumes
            # (clean_session); paho refuses any other clean_start than its default there.
            clean_start=self._first_connect if v5 else MQTT_CLEAN_START_FIRST_ONLY,
            clean_session=None if v5 else False,
            properties=properties,
            will=will,
            keepalive=s.keepalive_s,
            timeout=s.connect_timeout_s,
            tls_context=_tls_context(s) if use_tls else None,  # mqtts:// only
            # Without TCP_NODELAY every awaited QoS 1 publish waits ~40 ms for delayed ACKs.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        # An edge serving many devices has a QoS 1 publish in flight per device; aiomqtt's
        # default (10) logs a warning on every busy round, which buries the real ones.
        client.pending_calls_threshold = PENDING_CALLS_WARNING
        return client


class _QueueIterator:
    def __init__(self, queue: asyncio.Queue[Message]) -> None:
        self._queue = queue

    def __aiter__(self) -> _QueueIterator:
        return self

    async def __anext__(self) -> Message:
        return await self._queue.get()


def _convert(message: aiomqtt.Message) -> Message:
    payload = message.payload
    if isinstance(payload, str):
        data = payload.encode()
    elif isinstance(payload, bytes | bytearray):
        data = bytes(payload)
    else:
        data = b"" if payload is None else str(payload).encode()
    return Message(topic=message.topic.value, payload=data, retain=bool(message.retain))


def _tls_context(s: MqttSettings) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise LinkError(f"cannot load mqtt.ca_file {s.ca_file}: {exc}") from exc
    if s.cert_file is not None:
        try:
            context.load_cert_chain(str(s.cert_file), str(s.key_file) if s.key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise LinkError(
                f"cannot load the client certificate mqtt.cert_file {s.cert_file}: {exc}"
            ) from exc
    return context
