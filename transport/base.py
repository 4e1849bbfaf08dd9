"""The transport seam: what the services need from a message link, whatever carries it.

The edge service and the device agent publish and read messages through a :class:`Link`; they
get one from a :class:`Connect` (a factory that opens it as an async context manager, already
connected and subscribed). ``transport.mqtt`` is the real one (aiomqtt on a broker),
``transport.memory`` an in-process one for unit tests. A new transport implements these two
protocols: nothing in the services changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

from schemas.errors import AresError


class LinkError(AresError, RuntimeError):
    """The broker could not be reached, or a publish did not complete in time."""


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True, slots=True)
class LastWill:
    """Published by the broker for us if we vanish without saying goodbye."""

    topic: str
    payload: bytes
    retain: bool = True


# Run on every (re)connect, beside the reader: it may publish and wait for replies.
OnConnect = Callable[[], Coroutine[Any, Any, None]]


class Link(Protocol):
    """A connection that stays up across broker restarts (reconnecting by itself)."""

    @property
    def is_connected(self) -> bool: ...

    @property
    def running(self) -> bool:
        """Whether its connection loop lives (it ends only when the link closes)."""
        ...

    @property
    def connects(self) -> int:
        """Successful connections so far, reconnects included."""
        ...

    def messages(self) -> AsyncIterator[Message]:
        """Every message on our subscriptions, across reconnects (cancellation-safe)."""
        ...

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Deliver to the broker, within the link's deadline, or raise LinkError."""
        ...

    async def subscribe(self, subscriptions: Sequence[tuple[str, int]]) -> None:
        """Add subscriptions (topic filter, QoS), kept on every reconnect; confirmed by the
        broker when this returns while connected (LinkError if it does not confirm)."""
        ...

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """Drop subscriptions added by ``subscribe`` (or given at the start)."""
        ...


class ManagedLink(Link, Protocol):
    """A link that connects when entered and closes (cleanly: no will) when left. The owner
    may hold it before entering: its on_connect callback publishes through it."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Connect(Protocol):
    """Makes a link for ``client_id`` subscribed to ``subscriptions`` (topic filter, QoS)."""

    def __call__(
        self,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        *,
        will: LastWill | None = None,
        on_connect: OnConnect | None = None,
    ) -> ManagedLink: ...
