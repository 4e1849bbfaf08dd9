"""Sending one message to every device without stalling the event loop.

``asyncio.gather`` over hundreds of publishes runs the first step of every one of them (encode,
hand the packet to the MQTT client) in the same loop iteration: 500 round starts blocked the
edge's loop for 100-130 ms. With at most 32 in flight the longest stall was ~5 ms, and all 500
were sent no later (bench_edge_scale.py, and the experiment in its notes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Literal, TypeVar, overload

FANOUT_LIMIT = 32

T = TypeVar("T")


@overload
async def gather_bounded(
    coros: Iterable[Awaitable[T]],
    limit: int = ...,
    *,
    return_exceptions: Literal[False] = ...,
) -> list[T]: ...


@overload
async def gather_bounded(
    coros: Iterable[Awaitable[T]],
    limit: int = ...,
    *,
    return_exceptions: Literal[True],
) -> list[T | BaseException]: ...


async def gather_bounded(
    coros: Iterable[Awaitable[T]],
    limit: int = FANOUT_LIMIT,
    *,
    return_exceptions: bool = False,
) -> list[T] | list[T | BaseException]:
    """Like ``asyncio.gather``, with at most ``limit`` of the coroutines running at once."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    slots = asyncio.Semaphore(limit)

    async def bounded(awaitable: Awaitable[T]) -> T:
        try:
            async with slots:
                return await awaitable
        finally:
            if isinstance(awaitable, Coroutine):
                awaitable.close()  # never started (cancelled while waiting): no warning

    runs = [bounded(awaitable) for awaitable in coros]
    if return_exceptions:
        return await asyncio.gather(*runs, return_exceptions=True)
    return await asyncio.gather(*runs)
