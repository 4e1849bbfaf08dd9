"""Cancelling a helper task never swallows a cancellation aimed at the caller."""

from __future__ import annotations

import asyncio

import pytest

from transport.tasks import cancel_and_wait


async def test_cancel_and_wait_stops_the_task():
    task = asyncio.create_task(asyncio.sleep(60))
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_cancel_and_wait_gives_up_after_its_bound():
    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # cleanup that ignores the request for a while

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    began = asyncio.get_running_loop().time()
    await cancel_and_wait(task, within_s=0.05)
    assert asyncio.get_running_loop().time() - began < 0.4
    assert not task.done()
    await task


async def test_a_cancellation_of_the_caller_is_passed_on():
    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)

    async def caller() -> None:
        helper = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        await cancel_and_wait(helper)

    outer = asyncio.create_task(caller())
    await asyncio.sleep(0.05)  # the caller is now waiting on its helper
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
