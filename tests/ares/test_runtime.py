"""SIGTERM stops a service even when some library code swallows the first cancellation."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

import runtime.loop


def test_sigterm_is_repeated_until_the_service_stops(monkeypatch):
    monkeypatch.setattr(runtime.loop, "RECANCEL_AFTER_S", 0.05)
    swallowed = []

    async def service() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed.append(True)  # the bug this guards against: a lost cancellation
        await asyncio.sleep(30)

    with pytest.raises(asyncio.CancelledError):
        runtime.run(service)
    assert swallowed == [True]


def test_a_service_that_finishes_returns_its_result():
    async def service() -> int:
        return 7

    assert runtime.run(service) == 7
