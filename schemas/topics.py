"""Every MQTT topic name of the protocol, built in one place.

Layout (prefix configurable, default ``ares/v1``)::

    {prefix}/edge/status          edge -> all     JSON, retained
    {prefix}/edge/plan            edge -> all     JSON, retained
    {prefix}/dev/{id}/{channel}   per-device subtree, see DeviceChannel
    {prefix}/serve/status         serving edge -> all   JSON, retained
    {prefix}/serve/plan           serving edge -> all   JSON, retained
    {prefix}/dev/{id}/serve/...   per-device serving subtree, see ServeChannel

Per-device subtrees let a broker ACL confine each device to ``{prefix}/dev/%u/#``.
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


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` or raise ValueError if it cannot be a topic level."""
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise ValueError(
            f"invalid device id {device_id!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return device_id


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
