"""Everything the edge publishes: counted per channel, each device addressed in the protocol
version it speaks, fire-and-forget sends kept as background tasks that shut down bounded."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from edge_service.registry import DeviceRegistry
from edge_service.rejections import Counters
from schemas import (
    PROTOCOL_VERSION,
    DeviceChannel,
    ErrorReport,
    ProtocolVersion,
    Topics,
    WireModel,
    encode_frame,
    to_json,
    to_meta,
)
from transport import Link, LinkError
from transport.tasks import BackgroundTasks

log = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self, topics: Topics, counters: Counters, devices: DeviceRegistry, max_frame_bytes: int
    ) -> None:
        self.topics = topics
        self.counters = counters
        self.devices = devices
        self.max_frame_bytes = max_frame_bytes
        self.link: Link | None = None  # set by the service before it connects
        self.background = BackgroundTasks()

    def spawn(self, send: Coroutine[Any, Any, None]) -> None:
        self.background.spawn(send)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        assert self.link is not None, "the service connects before it publishes"
        channel = topic.rsplit("/", 1)[-1]
        self.counters.add(f"messages_out.{channel}")
        self.counters.add(f"bytes_out.{channel}", len(payload))
        await self.link.publish(topic, payload, qos=1, retain=retain)

    async def publish_informative(self, topic: str, payload: bytes) -> None:
        """Retained status and plan: for people and tools, never worth failing a round for."""
        try:
            await self.publish(topic, payload, retain=True)
        except LinkError as exc:
            log.warning("%s not published: %s", topic, exc)

    async def send_ctrl(
        self, device_id: str, message: WireModel, tensors: dict[str, Any] | None = None
    ) -> None:
        meta = to_meta(message, self._protocol(device_id))
        payload = encode_frame(meta, tensors, max_bytes=self.max_frame_bytes)
        await self.publish(self.topics.device(device_id, DeviceChannel.CTRL), payload)

    async def publish_grad(self, device_id: str, payload: bytes) -> None:
        # A lost gradient is not fatal: the device re-sends its batch and gets the cached reply.
        try:
            await self.publish(self.topics.device(device_id, DeviceChannel.GRAD), payload)
        except LinkError as exc:
            log.warning("gradient for %s not delivered (%s); the device will ask again",
                        device_id, exc)  # fmt: skip

    def report_error(self, report: ErrorReport) -> None:
        topic = self.topics.device(report.device_id, DeviceChannel.ERROR)
        self.spawn(self.publish(topic, to_json(report, self._protocol(report.device_id))))

    def _protocol(self, device_id: str) -> ProtocolVersion:
        record = self.devices.get(device_id)
        return record.protocol if record is not None else PROTOCOL_VERSION
