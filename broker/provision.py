"""A production broker setup as data, and its files as text: mosquitto.conf, ACL, client configs.

Pure: nothing here touches the disk (``broker.setup_dir`` writes the files). The setup has two
listeners: TLS for devices on the network, and plain TCP on 127.0.0.1 for an edge service on the
same host (or in the broker container's network namespace). Both require a user name and password
(``per_listener_settings false`` makes authentication global), and the ACL confines every device,
whose user name is its device id, to its own topic subtree.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import PurePosixPath
from typing import Any

from broker.config import MQTT_MAX_PACKET_SIZE
from schemas.config_file import toml_value
from schemas.errors import AresError
from schemas.topics import (
    DEFAULT_PREFIX,
    DEVICE_TO_EDGE,
    EDGE_TO_DEVICE,
    SERVE_DEVICE_READS,
    SERVE_DEVICE_WRITES,
    DeviceChannel,
    ServeChannel,
    Topics,
)

EDGE_USER = "ares-edge"
INSPECTOR_USER = "inspector"
RESERVED_USERS = frozenset({EDGE_USER, INSPECTOR_USER})
SETUP_VERSION = 1
MIB = 1024 * 1024
# Room for an MQTT PUBLISH's own fields around the payload: fixed header, topic (at most 65535
# bytes by the protocol), packet id and MQTT 5 properties.
PACKET_OVERHEAD = 64 * 1024
MIN_PAYLOAD_BYTES = 1024  # MqttSettings' lower bound
MAX_QUEUED_MESSAGES = 1000
# A client's queue holds at least this much, and at least a few of the largest messages.
MIN_QUEUED_BYTES = 256 * MIB
QUEUED_LARGEST_MESSAGES = 4


class ProvisionError(AresError, ValueError):
    """A setup that cannot be rendered; the message names the offending value."""


@dataclass(frozen=True)
class BrokerSetup:
    """What ``ares broker init`` was asked for: every generated file is rendered from this."""

    hosts: tuple[str, ...]  # the server certificate's names; devices connect to the first
    mount_path: PurePosixPath  # where the broker sees the setup directory
    max_payload_bytes: int  # the largest MQTT payload a client sends (edge and devices agree)
    tls_port: int = 8883
    local_port: int = 1883
    bind: str | None = None  # the TLS listener's address; None: every interface
    prefix: str = DEFAULT_PREFIX
    require_client_cert: bool = False
    run_as: str | None = None  # the account mosquitto switches to when started as root
    persistence_dir: PurePosixPath | None = None  # None: no persistence
    version: int = SETUP_VERSION

    def __post_init__(self) -> None:
        if self.version != SETUP_VERSION:
            raise ProvisionError(f"setup version {self.version} is not {SETUP_VERSION}")
        if not self.hosts:
            raise ProvisionError("at least one host name is needed (devices connect to it)")
        for name in ("tls_port", "local_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise ProvisionError(f"{name} {port} is outside 1..65535")
        if self.tls_port == self.local_port:
            raise ProvisionError(f"the TLS and local listeners share port {self.tls_port}")
        if self.bind is not None:
            _check_address(self.bind, "bind")
        try:
            Topics(self.prefix)
        except ValueError as exc:
            raise ProvisionError(str(exc)) from None
        if (
            not MIN_PAYLOAD_BYTES
            <= self.max_payload_bytes
            <= MQTT_MAX_PACKET_SIZE - PACKET_OVERHEAD
        ):
            raise ProvisionError(
                f"max_payload_bytes {self.max_payload_bytes} is outside {MIN_PAYLOAD_BYTES}.."
                f"{MQTT_MAX_PACKET_SIZE - PACKET_OVERHEAD} (MQTT's packet limit)"
            )
        for name in ("mount_path", "persistence_dir"):
            path = getattr(self, name)
            if path is not None and not path.is_absolute():
                raise ProvisionError(f"{name} must be an absolute path, got {str(path)!r}")
        if self.run_as is not None and (
            not self.run_as or any(c.isspace() or not c.isprintable() for c in self.run_as)
        ):
            raise ProvisionError(f"invalid run_as account {self.run_as!r}")
        # Mosquitto's config format has no quoting: a line break would inject a directive.
        for f in fields(self):
            value = getattr(self, f.name)
            for text in value if isinstance(value, tuple) else (value,):
                if isinstance(text, str | PurePosixPath) and any(c in str(text) for c in "\r\n\0"):
                    raise ProvisionError(f"{f.name} contains a line break or NUL: {text!r}")

    @property
    def max_packet_size(self) -> int:
        return self.max_payload_bytes + PACKET_OVERHEAD

    @property
    def max_queued_bytes(self) -> int:
        return max(MIN_QUEUED_BYTES, QUEUED_LARGEST_MESSAGES * self.max_packet_size)

    def broker_path(self, *parts: str) -> PurePosixPath:
        """A file of the setup directory as the broker sees it."""
        return self.mount_path.joinpath(*parts)

    @property
    def device_url(self) -> str:
        return f"mqtts://{_url_host(self.hosts[0])}:{self.tls_port}"

    @property
    def local_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.local_port}"


# --- mosquitto.conf ---------------------------------------------------------------------------


def render_mosquitto_conf(setup: BrokerSetup) -> str:
    """The broker's whole configuration (Mosquitto 2.x)."""
    tls_listener = f"listener {setup.tls_port}" + (f" {setup.bind}" if setup.bind else "")
    lines = [
        "# ARES broker, generated by `ares broker init`; see docs/security.md.",
        "# Mosquitto 2.x syntax, see mosquitto.conf(5). Reload users and ACLs with SIGHUP.",
        "",
        "# Authentication and access control below apply to both listeners alike.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {setup.broker_path('passwd')}",
        f"acl_file {setup.broker_path('acl')}",
        "",
        "# Devices on the network: MQTT over TLS only.",
        tls_listener,
        f"cafile {setup.broker_path('certs', 'ca.crt')}",
        f"certfile {setup.broker_path('certs', 'server.crt')}",
        f"keyfile {setup.broker_path('certs', 'server.key')}",
        "# The oldest TLS version accepted.",
        "tls_version tlsv1.2",
    ]
    if setup.require_client_cert:
        lines += [
            "# Clients must also present a certificate signed by the CA above.",
            "require_certificate true",
        ]
    lines += [
        "",
        "# The edge service on this host (or in this container's network namespace): plain",
        "# TCP on loopback, so nothing on the network reaches the broker without TLS.",
        f"listener {setup.local_port} 127.0.0.1",
        "",
        "# Disable Nagle's algorithm: PUBACKs and small publishes go out at once instead of",
        "# waiting up to 40 ms behind a delayed ACK, which would stall every batch.",
        "set_tcp_nodelay true",
        "",
        "# The largest MQTT packet a client may send: the model's largest message (weights or",
        "# a batch of activations) with a margin. Larger packets cost the sender its connection.",
        f"max_packet_size {setup.max_packet_size}",
        "",
        "# Bounded per-client queues (QoS 1 messages beyond those in flight, also for devices",
        "# away with a persistent session): a stalled client cannot exhaust the broker's memory.",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {setup.max_queued_bytes}",
        "# Not 0: with unlimited messages in flight nothing is ever queued for an MQTT 3.1.1",
        "# client, and the limits above would not apply to it.",
        "max_inflight_messages 20",
        "# Forget the sessions of clients that stay away longer than this.",
        "persistent_client_expiration 1d",
        "",
    ]
    if setup.persistence_dir is not None:
        lines += [
            "# Retained status and persistent sessions survive a broker restart.",
            "persistence true",
            f"persistence_location {str(setup.persistence_dir).rstrip('/')}/",
            "autosave_interval 300",
        ]
    else:
        lines += [
            "# No persistence: after a restart the services republish their retained status",
            "# and resubscribe by themselves.",
            "persistence false",
        ]
    if setup.run_as is not None:
        lines += [
            "",
            "# The account mosquitto switches to when started as root.",
            f"user {setup.run_as}",
        ]
    lines += [
        "",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "connection_messages true",
        "",
    ]
    return "\n".join(lines)


# --- ACL --------------------------------------------------------------------------------------


def render_acl(prefix: str = DEFAULT_PREFIX) -> str:
    """The acl_file: the edge runs the protocol, the inspector watches, each device its own.

    The channels come from the wire contract (schemas.topics), so a new channel cannot be
    forgotten here. Devices subscribe to their ctrl/grad/error and to the edge's retained
    status; they publish hello, telemetry, activations, weights and their retained status,
    which is also the topic of their MQTT will.
    """
    topics = Topics(prefix)
    device = f"{topics.prefix}/dev/%u"
    lines = [
        "# ARES broker ACL, generated by `ares broker init` (Mosquitto 2.x acl_file syntax).",
        "#",
        "# No lines come before the first `user`: anonymous clients get nothing (and",
        "# allow_anonymous is off anyway).",
        "",
        "# The edge service reads every device topic and writes ctrl/grad/error and edge/#.",
        f"user {EDGE_USER}",
        f"topic readwrite {topics.prefix}/#",
        "",
        "# Read-only observer (MQTT Explorer, dashboards); $SYS carries broker statistics.",
        "# The patterns below apply to every user: without the deny line the inspector could",
        f"# publish as a device named {INSPECTOR_USER!r} and join training.",
        f"user {INSPECTOR_USER}",
        f"topic deny {topics.prefix}/dev/{INSPECTOR_USER}/#",
        f"topic read {topics.prefix}/#",
        "topic read $SYS/#",
        "",
        "# Every device logs in with its device id as user name, so %u confines it to its own",
        "# subtree: it can neither pose as another device nor read another's gradients. Pattern",
        "# lines apply to every user.",
        *(f"pattern write {device}/{channel.value}" for channel in DEVICE_TO_EDGE),
        *(f"pattern read {device}/{channel.value}" for channel in EDGE_TO_DEVICE),
        "# A device reads its own retained status too, to correct a stale offline (an old will).",
        f"pattern read {device}/{DeviceChannel.STATUS.value}",
        "# Serving (ares device --serve) under the same confinement; the device's application,",
        "# logged in as the device, publishes its requests and reads its answers.",
        *(f"pattern write {device}/{channel.value}" for channel in SERVE_DEVICE_WRITES),
        f"pattern write {device}/{ServeChannel.REQUEST.value}",
        *(f"pattern read {device}/{channel.value}" for channel in SERVE_DEVICE_READS),
        f"pattern read {device}/{ServeChannel.ANSWER.value}",
        "# No %u here, so Mosquitto's start-up warning about such a pattern is expected.",
        f"pattern read {topics.prefix}/edge/#",
        f"pattern read {topics.prefix}/serve/#",
        "",
    ]
    return "\n".join(lines)


# --- client configs (TOML, read by the services' settings) -------------------------------------


@dataclass(frozen=True)
class ClientConfig:
    """A client's MQTT settings: the [mqtt] table of a service's config file."""

    url: str
    prefix: str
    username: str
    password: str
    max_payload_bytes: int
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    device_id: str | None = None  # device configs only: a top-level key

    def mqtt_table(self) -> dict[str, Any]:
        """The [mqtt] keys, as MqttSettings takes them (unset ones left out)."""
        table: dict[str, Any] = {
            "url": self.url,
            "prefix": self.prefix,
            "username": self.username,
            "password": self.password,
            "ca_file": self.ca_file,
            "cert_file": self.cert_file,
            "key_file": self.key_file,
            "max_payload_bytes": self.max_payload_bytes,
        }
        return {key: value for key, value in table.items() if value is not None}

    def to_toml(self, comments: Sequence[str] = ()) -> str:
        lines = [f"# {line}".rstrip() for line in comments]
        if lines:
            lines.append("")
        if self.device_id is not None:
            lines += [f"device_id = {toml_value(self.device_id)}", ""]
        lines.append("[mqtt]")
        lines += [f"{key} = {toml_value(value)}" for key, value in self.mqtt_table().items()]
        return "\n".join(lines) + "\n"


def edge_client(setup: BrokerSetup, password: str) -> ClientConfig:
    """The edge service on the broker's host: the loopback listener, no TLS needed."""
    return ClientConfig(
        url=setup.local_url,
        prefix=setup.prefix,
        username=EDGE_USER,
        password=password,
        max_payload_bytes=setup.max_payload_bytes,
    )


def device_client(
    setup: BrokerSetup,
    device_id: str,
    password: str,
    *,
    ca_file: PurePosixPath,
    client_cert: bool,
) -> ClientConfig:
    """A device over TLS; its files live next to ``ca_file`` on the device."""
    directory = ca_file.parent
    return ClientConfig(
        url=setup.device_url,
        prefix=setup.prefix,
        username=device_id,
        password=password,
        max_payload_bytes=setup.max_payload_bytes,
        ca_file=str(ca_file),
        cert_file=str(directory / f"{device_id}.crt") if client_cert else None,
        key_file=str(directory / f"{device_id}.key") if client_cert else None,
        device_id=device_id,
    )


def inspector_client(
    setup: BrokerSetup, password: str, *, ca_file: str, cert_file: str | None, key_file: str | None
) -> ClientConfig:
    """The read-only observer, over TLS (paths as the operator's machine sees them)."""
    return ClientConfig(
        url=setup.device_url,
        prefix=setup.prefix,
        username=INSPECTOR_USER,
        password=password,
        max_payload_bytes=setup.max_payload_bytes,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
    )


# --- the setup record (DIR/setup.toml) ---------------------------------------------------------


def render_setup(setup: BrokerSetup) -> str:
    """The setup as TOML, so that ``add-device`` renders what ``init`` was asked for."""
    lines = [
        "# What `ares broker init` was asked for; `ares broker add-device` reads it.",
        "# Edit with care: mosquitto.conf and the client configs are not regenerated from it.",
        "",
    ]
    for f in fields(setup):
        value = getattr(setup, f.name)
        if value is not None:
            lines.append(f"{f.name} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def parse_setup(text: str) -> BrokerSetup:
    """The inverse of render_setup; a ProvisionError names what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError(f"setup.toml is not valid TOML: {exc}") from None
    return _setup_from_dict(data)


def _setup_from_dict(data: Mapping[str, Any]) -> BrokerSetup:
    known = {f.name: f for f in fields(BrokerSetup)}
    unknown = set(data) - set(known)
    if unknown:
        raise ProvisionError(f"setup.toml has unknown keys {sorted(unknown)}")
    expected: dict[str, type | tuple[type, ...]] = {
        "hosts": list,
        "mount_path": str,
        "persistence_dir": str,
        "max_payload_bytes": int,
        "tls_port": int,
        "local_port": int,
        "bind": str,
        "prefix": str,
        "require_client_cert": bool,
        "run_as": str,
        "version": int,
    }
    values: dict[str, Any] = {}
    for key, value in data.items():
        kind = expected[key]
        # bool is an int: an integer key must not take true/false.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProvisionError(f"setup.toml: {key} has the wrong type ({type(value).__name__})")
        values[key] = value
    if not all(isinstance(h, str) for h in values.get("hosts", ())):
        raise ProvisionError("setup.toml: hosts must be a list of strings")
    values["hosts"] = tuple(values.get("hosts", ()))
    for key in ("mount_path", "persistence_dir"):
        if key in values:
            values[key] = PurePosixPath(values[key])
    missing = {"hosts", "mount_path", "max_payload_bytes"} - set(data)
    if missing:
        raise ProvisionError(f"setup.toml lacks {sorted(missing)}")
    return BrokerSetup(**values)


# --- TOML output --------------------------------------------------------------------------------


def _check_address(host: str, what: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ProvisionError(f"{what} must be an IP address, got {host!r}") from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
