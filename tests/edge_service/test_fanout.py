"""gather_bounded: asyncio.gather with a bound on how many run at once."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from edge_service.fanout import gather_bounded


async def test_results_in_order_and_never_more_than_the_limit_at_once() -> None:
    running, most = 0, 0

    async def job(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (i % 3))
        running -= 1
        return i * i

    assert await gather_bounded((job(i) for i in range(50)), limit=4) == [i * i for i in range(50)]
    assert most == 4


async def test_exceptions_propagate_or_are_returned() -> None:
    async def job(i: int) -> int:
        if i == 2:
            raise KeyError(i)
        return i

    with pytest.raises(KeyError):
        await gather_bounded(job(i) for i in range(4))
    results = await gather_bounded((job(i) for i in range(4)), return_exceptions=True)
    assert results[:2] == [0, 1]
    assert isinstance(results[2], KeyError)
    assert results[3] == 3


async def test_cancelling_closes_the_coroutines_that_never_started() -> None:
    started: list[int] = []

    async def job(i: int) -> None:
        started.append(i)
        await asyncio.sleep(10)

    coros = [job(i) for i in range(10)]
    task = asyncio.create_task(gather_bounded(coros, limit=2))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert started == [0, 1]
    # Closed, so never reported as "never awaited".
    assert all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in coros)


async def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        await gather_bounded([], limit=0)
