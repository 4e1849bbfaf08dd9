"""Ping before eviction: a device said to be offline is evicted only if it does not answer.

Its MQTT will is trustworthy, but on a broker without per-device ACLs so is anyone's forgery of
an ``offline`` status, and a live device must not be evicted on a stranger's word.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

from edge_service.outbox import Outbox
from edge_service.registry import DeviceRegistry
from edge_service.rejections import Counters
from schemas import Ping
from transport import LinkError

log = logging.getLogger(__name__)


class Liveness:
    def __init__(
        self,
        *,
        session: str,
        devices: DeviceRegistry,
        outbox: Outbox,
        counters: Counters,
        timeout_s: float,
        on_evicted: Callable[[str], None],  # the device was offline: drop it from its round
    ) -> None:
        self.session = session
        self.devices = devices
        self.outbox = outbox
        self.counters = counters
        self.timeout_s = timeout_s
        self.on_evicted = on_evicted
        self._pings: dict[str, tuple[str, asyncio.Event]] = {}  # device -> (nonce, answered)

    def suspect(self, device_id: str) -> None:
        """Someone says the device is offline: ask it, once at a time."""
        record = self.devices.get(device_id)
        if record is not None and record.online and device_id not in self._pings:
            self.outbox.spawn(self._confirm_offline(device_id))

    def answered(self, device_id: str, nonce: str | None) -> None:
        ping = self._pings.get(device_id)
        if ping is not None and nonce == ping[0]:
            ping[1].set()

    async def _confirm_offline(self, device_id: str) -> None:
        nonce = uuid.uuid4().hex[:12]
        answered = asyncio.Event()
        self._pings[device_id] = (nonce, answered)
        self.counters.add("liveness.pings")
        try:
            with contextlib.suppress(LinkError):
                await self.outbox.send_ctrl(device_id, Ping(session=self.session, nonce=nonce))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout_s):
                    await answered.wait()
        finally:
            del self._pings[device_id]
        if answered.is_set():
            self.counters.add("liveness.refuted")
            log.warning("device %s was reported offline but answered a ping: it stays",
                        device_id)  # fmt: skip
        elif self.devices.mark_offline(device_id):
            self.on_evicted(device_id)
