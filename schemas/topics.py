"""Every MQTT topic name of the protocol, built in one place.

Layout (prefix configurable, default ``ares/v1``)::

    {prefix}/edge/status          edge -> all     JSON, retained
    {prefix}/edge/plan            edge -> all     JSON, retained
    {prefix}/dev/{id}/{channel}   per-device subtree, see DeviceChannel
    {prefix}/serve/status         serving edge -> all   JSON, retained
    {prefix}/serve/plan           serving edge -> all   JSON, retained
    {prefix}/dev/{id}/serve/...   per-device serving subtree, see ServeChannel
    {prefix}/cluster/...          edge replica <-> edge replica, see ClusterChannel

Per-device subtrees let a broker ACL confine each device to ``{prefix}/dev/%u/#``. The
cluster's topics live on the core broker only: no site bridge forwards them (broker.bridge).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_PREFIX = "ares/v1"

# Device ids become topic levels and broker user names: no MQTT wildcards or separators.
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class DeviceChannel(StrEnum):
    """The last level of a device topic; the comment says who publishes it."""

    HELLO = "hello"  # device -> edge: registration (JSON)
    STATUS = "status"  # device -> all: online/offline, retained, set by the will (JSON)
    TELEMETRY = "telemetry"  # device -> edge: readings (JSON)
    ACT = "act"  # device -> edge: activations and labels (msgpack frame)
    WEIGHTS = "weights"  # device -> edge: device-side state at round end (msgpack frame)
    CTRL = "ctrl"  # edge -> device: welcome, round start, abort, finish (msgpack frame)
    GRAD = "grad"  # edge -> device: gradient of the cut activations (msgpack frame)
    ERROR = "error"  # edge -> device: what was rejected and why (JSON)


DEVICE_TO_EDGE = (
    DeviceChannel.HELLO,
    DeviceChannel.STATUS,
    DeviceChannel.TELEMETRY,
    DeviceChannel.ACT,
    DeviceChannel.WEIGHTS,
)
EDGE_TO_DEVICE = (DeviceChannel.CTRL, DeviceChannel.GRAD, DeviceChannel.ERROR)
# A device's traffic within a round: with several edge replicas, only the one serving it reads it.
ROUND_TRAFFIC = (DeviceChannel.ACT, DeviceChannel.WEIGHTS)


class ServeChannel(StrEnum):
    """Serving's levels under a device's subtree (two levels: ``serve/...``), so the training
    protocol's topics and parsers never see them and the ACL's ``{prefix}/dev/%u/#`` still
    confines a device. The comment says who publishes it."""

    REQUEST = "serve/request"  # application -> device: a request (JSON or msgpack frame)
    ANSWER = "serve/answer"  # device -> application: the answer, or why not (JSON)
    HELLO = "serve/hello"  # device -> serving edge: its model, timings, resources (JSON)
    STATUS = "serve/status"  # device -> all: online/offline, retained, set by the will (JSON)
    TELEMETRY = "serve/telemetry"  # device -> serving edge: exit rate, latency, link (JSON)
    ACT = "serve/act"  # device -> serving edge: one request's cut activation (msgpack frame)
    RESULT = "serve/result"  # serving edge -> device: the edge's label for a request (JSON)
    CTRL = "serve/ctrl"  # serving edge -> device: its cut and threshold, retained (JSON)


# What a serving device publishes and what it reads (its application's requests among them):
# the broker's ACL grants a device exactly these under its own subtree.
SERVE_DEVICE_WRITES = (
    ServeChannel.ANSWER,
    ServeChannel.HELLO,
    ServeChannel.STATUS,
    ServeChannel.TELEMETRY,
    ServeChannel.ACT,
)
SERVE_DEVICE_READS = (ServeChannel.REQUEST, ServeChannel.RESULT, ServeChannel.CTRL)


class ClusterChannel(StrEnum):
    """The level under ``{prefix}/cluster/`` of a message between edge replicas; REPLICA and
    PARTIAL take the replica's name as one more level. The comment says who publishes it."""

    REPLICA = "replica"  # each replica -> all: its status, retained, its will (JSON)
    LEASE = "lease"  # the coordinator -> all: who holds the role, retained (JSON)
    ORDER = "order"  # the coordinator -> all: the round's devices per replica, retained (JSON)
    PARTIAL = "partial"  # each replica -> the coordinator: its share of a round (msgpack frame)
    MODEL = "model"  # the coordinator -> all: the global model, retained (msgpack frame)
    REPORT = "report"  # the coordinator -> all: the run report so far, retained (JSON)


_NAMED_CLUSTER_CHANNELS = (ClusterChannel.REPLICA, ClusterChannel.PARTIAL)


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` or raise ValueError if it cannot be a topic level."""
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise ValueError(
            f"invalid device id {device_id!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return device_id


def validate_replica_name(name: str) -> str:
    """Return ``name`` or raise ValueError: a replica's name is a topic level, like a device id."""
    if not DEVICE_ID_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid edge replica name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        levels = self.prefix.split("/")
        if not self.prefix or any(not lvl or lvl in {"+", "#"} for lvl in levels):
            raise ValueError(f"invalid topic prefix {self.prefix!r}")
        if any(c in self.prefix for c in "+#\0"):
            raise ValueError(f"topic prefix {self.prefix!r} contains a wildcard")

    @property
    def edge_status(self) -> str:
        return f"{self.prefix}/edge/status"

    @property
    def edge_plan(self) -> str:
        return f"{self.prefix}/edge/plan"

    @property
    def serve_status(self) -> str:
        return f"{self.prefix}/serve/status"

    @property
    def serve_plan(self) -> str:
        return f"{self.prefix}/serve/plan"

    def device(self, device_id: str, channel: DeviceChannel | ServeChannel) -> str:
        return f"{self.prefix}/dev/{validate_device_id(device_id)}/{channel.value}"

    def all_devices(self, channel: DeviceChannel | ServeChannel) -> str:
        """Subscription filter for one channel of every device."""
        return f"{self.prefix}/dev/+/{channel.value}"

    def parse_device_topic(self, topic: str) -> tuple[str, DeviceChannel] | None:
        """Split ``{prefix}/dev/{id}/{channel}``; None for anything else."""
        head = f"{self.prefix}/dev/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :].split("/")
        if len(rest) != 2 or not DEVICE_ID_PATTERN.fullmatch(rest[0]):
            return None
        try:
            return rest[0], DeviceChannel(rest[1])
        except ValueError:
            return None

    def parse_serve_topic(self, topic: str) -> tuple[str, ServeChannel] | None:
        """Split ``{prefix}/dev/{id}/serve/{name}``; None for anything else."""
        head = f"{self.prefix}/dev/"
        if not topic.startswith(head):
            return None
        device_id, sep, channel = topic[len(head) :].partition("/")
        if not sep or not DEVICE_ID_PATTERN.fullmatch(device_id):
            return None
        try:
            return device_id, ServeChannel(channel)
        except ValueError:
            return None

    # --- between edge replicas (core broker only) ---------------------------------------------

    @property
    def cluster_all(self) -> str:
        """Subscription filter for every cluster message."""
        return f"{self.prefix}/cluster/#"

    def cluster_replica(self, name: str) -> str:
        return f"{self.prefix}/cluster/{ClusterChannel.REPLICA}/{validate_replica_name(name)}"

    @property
    def cluster_lease(self) -> str:
        return f"{self.prefix}/cluster/{ClusterChannel.LEASE}"

    @property
    def cluster_order(self) -> str:
        return f"{self.prefix}/cluster/{ClusterChannel.ORDER}"

    def cluster_partial(self, name: str) -> str:
        return f"{self.prefix}/cluster/{ClusterChannel.PARTIAL}/{validate_replica_name(name)}"

    @property
    def cluster_model(self) -> str:
        return f"{self.prefix}/cluster/{ClusterChannel.MODEL}"

    @property
    def cluster_report(self) -> str:
        return f"{self.prefix}/cluster/{ClusterChannel.REPORT}"

    def parse_cluster_topic(self, topic: str) -> tuple[ClusterChannel, str | None] | None:
        """Split ``{prefix}/cluster/{channel}[/{name}]``: the replica's name for REPLICA and
        PARTIAL, None for the others; None for anything else."""
        head = f"{self.prefix}/cluster/"
        if not topic.startswith(head):
            return None
        levels = topic[len(head) :].split("/")
        try:
            channel = ClusterChannel(levels[0])
        except ValueError:
            return None
        if channel in _NAMED_CLUSTER_CHANNELS:
            if len(levels) != 2 or not DEVICE_ID_PATTERN.fullmatch(levels[1]):
                return None
            return channel, levels[1]
        return (channel, None) if len(levels) == 1 else None
