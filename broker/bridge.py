"""Several sites: which topics a site broker's bridge carries to the core broker, as text.

A deployment with several sites (a factory hall, a farm) runs one broker per site, where that
site's devices connect, and one core broker, where the edge replicas connect. Each site broker
runs Mosquitto's own bridge to the core. This module renders the bridge section of the site's
mosquitto.conf and the core's ACL for the bridge's account; it is pure (``broker.site_dir``
writes the files).

What crosses, for each device provisioned at the site (``{prefix}/dev/{id}/<channel>``):

- the channels the device publishes for the edge go ``out`` (site -> core): ``DEVICE_UP``;
- the channels the edge publishes to the device come ``in`` (core -> site): ``EDGE_DOWN``;
- the edge's broadcasts (``{prefix}/edge/#``, the serving edge's ``{prefix}/serve/#``) come
  ``in``; and the bridge's own state goes to the core (``notification_topic``).

Nothing else: not ``$SYS``, not another site's devices, not the cluster's own topics, and not a
device's serving requests and answers, which stay between the device and its application at
the site (``SITE_LOCAL``). Every topic has one direction, never ``both``: a message can never
return to the broker it came from, so no loop or echo is possible. QoS 1, as the system uses.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from broker.provision import render_acl
from schemas.config_file import toml_value
from schemas.errors import AresError
from schemas.topics import (
    DEVICE_ID_PATTERN,
    DEVICE_TO_EDGE,
    EDGE_TO_DEVICE,
    SERVE_DEVICE_READS,
    SERVE_DEVICE_WRITES,
    DeviceChannel,
    ServeChannel,
    Topics,
)

BRIDGE_QOS = 1
BRIDGE_USER_PREFIX = "bridge@"  # "@" cannot be in a device id: no device can take the name
SITE_RECORD_VERSION = 1

Channel = DeviceChannel | ServeChannel

# Between a device and its own application (logged in as the device, at the same site).
SITE_LOCAL: tuple[Channel, ...] = (ServeChannel.REQUEST, ServeChannel.ANSWER)
# The device publishes, the (serving) edge reads: site -> core.
DEVICE_UP: tuple[Channel, ...] = (
    *DEVICE_TO_EDGE,
    *(c for c in SERVE_DEVICE_WRITES if c not in SITE_LOCAL),
)
# The (serving) edge publishes, the device reads: core -> site.
EDGE_DOWN: tuple[Channel, ...] = (
    *EDGE_TO_DEVICE,
    *(c for c in SERVE_DEVICE_READS if c not in SITE_LOCAL),
)


class BridgeError(AresError, ValueError):
    """A bridge that cannot be rendered, or a site record that cannot be read."""


class Direction(StrEnum):
    """Mosquitto's direction word, seen from the site broker (the bridge's local side)."""

    IN = "in"  # core -> site
    OUT = "out"  # site -> core


@dataclass(frozen=True, slots=True)
class BridgeTopic:
    """One ``topic`` line of the bridge: a topic (or filter), its direction and QoS."""

    pattern: str
    direction: Direction
    qos: int = BRIDGE_QOS

    def line(self) -> str:
        return f"topic {self.pattern} {self.direction.value} {self.qos}"


def validate_site_name(name: str) -> str:
    """Return ``name`` or raise: it becomes a topic level and part of a user name."""
    if not DEVICE_ID_PATTERN.fullmatch(name):
        raise BridgeError(
            f"invalid site name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def bridge_user(site: str) -> str:
    """The bridge's user name (and client id) at the core."""
    return f"{BRIDGE_USER_PREFIX}{validate_site_name(site)}"


def notification_topic(prefix: str, site: str) -> str:
    """Where the bridge says whether it is connected: retained ``1`` or ``0`` (its will)."""
    return f"{Topics(prefix).prefix}/bridge/{validate_site_name(site)}/state"


def broadcast_filters(prefix: str) -> tuple[str, str]:
    """The edge's and the serving edge's topics for every device (status, plan)."""
    topics = Topics(prefix)
    return f"{topics.prefix}/edge/#", f"{topics.prefix}/serve/#"


def bridge_topics(prefix: str, device_ids: Iterable[str]) -> list[BridgeTopic]:
    """Every topic line of a site's bridge, devices in name order, broadcasts last.

    Broadcasts last: Mosquitto subscribes in this order on connecting, so a device that sees
    a retained broadcast through the bridge knows its own ``in`` topics are subscribed too.
    """
    topics = Topics(prefix)
    lines: list[BridgeTopic] = []
    for device in sorted(set(device_ids)):
        lines += [BridgeTopic(topics.device(device, c), Direction.OUT) for c in DEVICE_UP]
        lines += [BridgeTopic(topics.device(device, c), Direction.IN) for c in EDGE_DOWN]
    lines += [BridgeTopic(f, Direction.IN) for f in broadcast_filters(prefix)]
    return lines


# --- the site broker's bridge section -----------------------------------------------------------


@dataclass(frozen=True)
class BridgeTiming:
    """How the bridge watches and re-establishes its link to the core."""

    # A dead link (no FIN, e.g. a WAN outage) is noticed after 1.5 keepalives without traffic.
    keepalive_s: int = 15
    # Reconnect attempts: Mosquitto's "decorrelated jitter" from base up to cap seconds, so
    # the sites do not all reconnect at once after a core restart; a link back after an
    # outage is used again within cap seconds.
    restart_base_s: int = 2
    restart_cap_s: int = 15

    def __post_init__(self) -> None:
        if not 5 <= self.keepalive_s <= 65535:
            raise BridgeError(f"keepalive {self.keepalive_s} s is outside 5..65535 (Mosquitto's)")
        if not 1 <= self.restart_base_s <= self.restart_cap_s:
            raise BridgeError(
                f"restart timeout base {self.restart_base_s} s must be >= 1 and <= the cap "
                f"{self.restart_cap_s} s"
            )


@dataclass(frozen=True)
class SiteBridge:
    """One site broker's bridge to the core: where, as whom, with which files."""

    site: str
    prefix: str
    core_host: str  # must be one of the names in the core's certificate
    core_port: int  # the core's TLS listener
    password: str
    cafile: PurePosixPath  # the core's CA, as the site broker sees it
    certfile: PurePosixPath | None = None  # a client certificate, when the core requires one
    keyfile: PurePosixPath | None = None
    timing: BridgeTiming = field(default_factory=BridgeTiming)

    def __post_init__(self) -> None:
        validate_site_name(self.site)
        try:
            Topics(self.prefix)
        except ValueError as exc:
            raise BridgeError(str(exc)) from None
        if not 1 <= self.core_port <= 65535:
            raise BridgeError(f"core port {self.core_port} is outside 1..65535")
        # Mosquitto's config splits values at white space and has no quoting.
        for name in ("core_host", "password"):
            value = getattr(self, name)
            if not value or any(c.isspace() or not c.isprintable() for c in value):
                raise BridgeError(f"{name} must be non-empty, without spaces: {value!r}")
        for name in ("cafile", "certfile", "keyfile"):
            path = getattr(self, name)
            if path is None:
                continue
            if not path.is_absolute():
                raise BridgeError(f"{name} must be an absolute path, got {str(path)!r}")
            if any(c.isspace() or c == "\0" for c in str(path)):
                raise BridgeError(f"{name} must not contain white space: {str(path)!r}")
        if (self.certfile is None) != (self.keyfile is None):
            raise BridgeError("a client certificate needs both certfile and keyfile")

    @property
    def username(self) -> str:
        return bridge_user(self.site)

    @property
    def notification_topic(self) -> str:
        return notification_topic(self.prefix, self.site)


def render_bridge_section(bridge: SiteBridge, device_ids: Iterable[str]) -> str:
    """The ``connection`` block appended to a site broker's mosquitto.conf."""
    timing = bridge.timing
    lines = [
        "# --- the bridge to the core broker ------------------------------------------------",
        "# Generated by `ares broker init-site` and `add-device`; see docs/deployment.md.",
        "# Mosquitto reads bridges only at start: restart this broker (SIGHUP is not enough)",
        "# after add-device changed the topic lines below.",
        f"connection {bridge.username}",
        f"address {bridge.core_host}:{bridge.core_port}",
        "bridge_protocol_version mqttv311",
        "# Tell the core we are a bridge: it keeps the retain flag of what it forwards to us",
        "# as published, so this broker's retained copies match the core's.",
        "try_private true",
        "bridge_outgoing_retain true",
        "",
        "# TLS to the core, whose certificate must carry the name in `address`.",
        f"bridge_cafile {bridge.cafile}",
    ]
    if bridge.certfile is not None and bridge.keyfile is not None:
        lines += [f"bridge_certfile {bridge.certfile}", f"bridge_keyfile {bridge.keyfile}"]
    lines += [
        "bridge_tls_version tlsv1.2",
        "bridge_insecure false",
        f"remote_username {bridge.username}",
        f"remote_password {bridge.password}",
        "",
        "# A persistent session under a fixed client id, on both brokers: while the link is",
        "# down the core queues the QoS 1 messages for this site and this broker queues the",
        "# site's (each up to its max_queued_messages / max_queued_bytes); they are delivered",
        "# in order once the link is back.",
        f"remote_clientid {bridge.username}",
        f"local_clientid local.{bridge.username}",
        "cleansession false",
        "local_cleansession false",
        "start_type automatic",
        f"keepalive_interval {timing.keepalive_s}",
        f"restart_timeout {timing.restart_base_s} {timing.restart_cap_s}",
        "",
        '# The link\'s state, retained on both brokers: "1" connected, "0" lost (on the core',
        "# by the bridge's will).",
        "notifications true",
        "notifications_local_only false",
        f"notification_topic {bridge.notification_topic}",
        "",
        "# Exactly what must cross, one direction per topic (never `both`: no loop, no echo):",
        "# a device's up channels out, the edge's down channels and broadcasts in.",
        *(topic.line() for topic in bridge_topics(bridge.prefix, device_ids)),
        "",
    ]
    return "\n".join(lines)


# --- the core's ACL -------------------------------------------------------------------------------


def render_bridge_acl(prefix: str, site: str, device_ids: Iterable[str]) -> str:
    """The core's ACL block for one site's bridge: exactly the topics the bridge forwards."""
    user = bridge_user(site)
    writes = [notification_topic(prefix, site)]
    reads: list[str] = []
    for topic in bridge_topics(prefix, device_ids):
        (writes if topic.direction is Direction.OUT else reads).append(topic.pattern)
    lines = [
        f"# Site {site}'s bridge: it publishes its devices' up channels and its state, and",
        "# reads their down channels and the broadcasts; nothing of any other site.",
        f"user {user}",
        *(f"topic write {topic}" for topic in writes),
        *(f"topic read {topic}" for topic in reads),
        "",
    ]
    return "\n".join(lines)


def render_core_acl(prefix: str, sites: Mapping[str, Sequence[str]]) -> str:
    """A core broker's whole ACL: a single broker's (``render_acl``) plus each site's bridge.

    Pattern lines apply to every user wherever they stand, so the bridge blocks can follow
    them; the patterns give a bridge account only topics of a device named like it, which no
    device can be (``@``).
    """
    blocks = [render_bridge_acl(prefix, site, sites[site]) for site in sorted(sites)]
    return render_acl(prefix) + "".join(f"\n{block}" for block in blocks)


# --- the site record (SITE/site.toml) -----------------------------------------------------------


@dataclass(frozen=True)
class SiteRecord:
    """What ``ares broker init-site`` was asked for: the bridge is rendered from it."""

    site: str
    core_dir: Path  # the core's setup directory on the provisioning machine
    core_host: str
    core_port: int
    timing: BridgeTiming = field(default_factory=BridgeTiming)
    version: int = SITE_RECORD_VERSION

    def __post_init__(self) -> None:
        validate_site_name(self.site)
        if self.version != SITE_RECORD_VERSION:
            raise BridgeError(f"site record version {self.version} is not {SITE_RECORD_VERSION}")
        if not self.core_dir.is_absolute():
            raise BridgeError(f"core_dir must be an absolute path, got {str(self.core_dir)!r}")


def render_site_record(record: SiteRecord) -> str:
    values: dict[str, Any] = {
        "site": record.site,
        "core_dir": record.core_dir,
        "core_host": record.core_host,
        "core_port": record.core_port,
        "keepalive_s": record.timing.keepalive_s,
        "restart_base_s": record.timing.restart_base_s,
        "restart_cap_s": record.timing.restart_cap_s,
        "version": record.version,
    }
    lines = [
        "# What `ares broker init-site` was asked for; `add-device` renders the bridge from it.",
        "",
        *(f"{key} = {toml_value(value)}" for key, value in values.items()),
    ]
    return "\n".join(lines) + "\n"


def parse_site_record(text: str) -> SiteRecord:
    """The inverse of render_site_record; a BridgeError names what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BridgeError(f"site.toml is not valid TOML: {exc}") from None
    expected = {
        "site": str,
        "core_dir": str,
        "core_host": str,
        "core_port": int,
        "keepalive_s": int,
        "restart_base_s": int,
        "restart_cap_s": int,
        "version": int,
    }
    unknown = set(data) - set(expected)
    if unknown:
        raise BridgeError(f"site.toml has unknown keys {sorted(unknown)}")
    missing = set(expected) - set(data)
    if missing:
        raise BridgeError(f"site.toml lacks {sorted(missing)}")
    for key, kind in expected.items():
        value = data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BridgeError(f"site.toml: {key} has the wrong type ({type(value).__name__})")
    return SiteRecord(
        site=data["site"],
        core_dir=Path(data["core_dir"]),
        core_host=data["core_host"],
        core_port=data["core_port"],
        timing=BridgeTiming(data["keepalive_s"], data["restart_base_s"], data["restart_cap_s"]),
        version=data["version"],
    )


# --- the core's registry of sites (CORE/sites/NAME.toml) -----------------------------------------


def render_site_devices(site: str, device_ids: Iterable[str]) -> str:
    lines = [
        f"# The devices provisioned at site {site}, as `ares broker add-device` registered them:",
        "# the core's acl gives the site's bridge exactly their topics.",
        "",
        f"site = {toml_value(validate_site_name(site))}",
        f"devices = {toml_value(sorted(set(device_ids)))}",
    ]
    return "\n".join(lines) + "\n"


def parse_site_devices(text: str) -> tuple[str, tuple[str, ...]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BridgeError(f"a site registry file is not valid TOML: {exc}") from None
    site, devices = data.get("site"), data.get("devices")
    if set(data) != {"site", "devices"} or not isinstance(site, str):
        raise BridgeError("a site registry file needs exactly `site` and `devices`")
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise BridgeError(f"site {site}: devices must be a list of strings")
    for device in devices:
        if not DEVICE_ID_PATTERN.fullmatch(device):
            raise BridgeError(f"site {site}: invalid device id {device!r}")
    return validate_site_name(site), tuple(devices)
