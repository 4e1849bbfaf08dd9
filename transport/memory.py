"""An in-process broker and its links: the transport seam's test double.

``MemoryBroker`` routes publishes to subscribers by MQTT topic filters (``+`` and ``#``), keeps
retained messages (an empty payload clears one) and publishes a link's will when the link is
dropped (``drop``), as a broker does when a client vanishes. It lets unit tests run the edge
service and device agents together in one event loop, without Mosquitto; the broker tests stay
on the real thing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Self

from transport.base import LastWill, LinkError, Message, OnConnect
from transport.tasks import BackgroundTasks


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching: ``+`` is one level, a final ``#`` any number (zero included)."""
    wanted, levels = pattern.split("/"), topic.split("/")
    for index, part in enumerate(wanted):
        if part == "#":
            return index == len(wanted) - 1
        if index >= len(levels) or (part != "+" and part != levels[index]):
            return False
    return len(wanted) == len(levels)


class MemoryBroker:
    """Routes messages between the links it opened, in this process."""

    def __init__(self) -> None:
        self._links: dict[str, MemoryLink] = {}
        self.retained: dict[str, bytes] = {}
        self.published: list[Message] = []  # everything, in order (for assertions)

    def connect(
        self,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        *,
        will: LastWill | None = None,
        on_connect: OnConnect | None = None,
    ) -> MemoryLink:
        """A ``transport.Connect``: the link connects when entered."""
        return MemoryLink(self, client_id, subscriptions, will=will, on_connect=on_connect)

    def route(self, topic: str, payload: bytes, *, retain: bool) -> None:
        self.published.append(Message(topic, payload, retain))
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        for link in list(self._links.values()):
            if link.is_connected and link.subscribed_to(topic):
                link.deliver(Message(topic, payload, False))

    def drop(self, client_id: str) -> None:
        """The client vanished (no DISCONNECT): its will goes out; it reconnects on restore."""
        link = self._links.get(client_id)
        if link is None:
            return
        link.set_connected(False)
        if link.will is not None:
            self.route(link.will.topic, link.will.payload, retain=link.will.retain)

    def restore(self, client_id: str) -> None:
        link = self._links.get(client_id)
        if link is not None:
            self._attach(link)

    def _attach(self, link: MemoryLink) -> None:
        old = self._links.get(link.client_id)
        if old is not None and old is not link:
            self.drop(old.client_id)  # a second connection with our id takes over, as in MQTT
        self._links[link.client_id] = link
        link.set_connected(True)
        for topic, payload in list(self.retained.items()):
            if link.subscribed_to(topic):
                link.deliver(Message(topic, payload, True))
        link.connected_once()

    def _detach(self, link: MemoryLink) -> None:
        if self._links.get(link.client_id) is link:
            del self._links[link.client_id]
        link.set_connected(False)


class MemoryLink:
    """A ``transport.Link`` through a MemoryBroker."""

    def __init__(
        self,
        broker: MemoryBroker,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        *,
        will: LastWill | None = None,
        on_connect: OnConnect | None = None,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.filters = tuple(topic for topic, _ in subscriptions)
        self.will = will
        self._on_connect = on_connect
        self._publish_timeout_s = publish_timeout_s
        self._connected = asyncio.Event()
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._background = BackgroundTasks()
        self._open = False
        self._connects = 0

    async def __aenter__(self) -> Self:
        self._open = True
        self.broker._attach(self)
        await asyncio.sleep(0)  # let on_connect start, as a real connection would
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        self.broker._detach(self)  # a clean disconnect: no will
        await self._background.drain(0)

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    @property
    def running(self) -> bool:
        return self._open

    @property
    def connects(self) -> int:
        return self._connects

    async def subscribe(self, subscriptions: Sequence[tuple[str, int]]) -> None:
        added = [t for t, _ in subscriptions if t not in self.filters]
        self.filters = (*self.filters, *added)

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        self.filters = tuple(f for f in self.filters if f not in filters)

    def subscribed_to(self, topic: str) -> bool:
        return any(topic_matches(pattern, topic) for pattern in self.filters)

    def deliver(self, message: Message) -> None:
        self._queue.put_nowait(message)

    def set_connected(self, connected: bool) -> None:
        if connected:
            self._connected.set()
        else:
            self._connected.clear()

    def connected_once(self) -> None:
        self._connects += 1
        if self._on_connect is not None:
            self._background.spawn(self._on_connect())

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            yield await self._queue.get()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._publish_timeout_s):
                await self._connected.wait()
        if not self.is_connected:
            raise LinkError(
                f"publish to {topic} did not complete within {self._publish_timeout_s} s"
            )
        self.broker.route(topic, payload, retain=retain)
        await asyncio.sleep(0)  # a publish yields, as a network write would
