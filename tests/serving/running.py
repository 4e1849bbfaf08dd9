"""Running serving services in a test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

HANG_S = 120.0  # a hang guard, never a pass criterion


class Service(Protocol):
    @property
    def ready(self) -> asyncio.Event: ...

    async def run(self) -> None: ...


@contextlib.asynccontextmanager
async def running(*services: Service) -> AsyncIterator[None]:
    """Run ``services`` until the block ends, each ready (or its failure raised) on entry."""
    tasks = [asyncio.create_task(s.run()) for s in services]
    try:
        async with asyncio.timeout(HANG_S):
            for service, task in zip(services, tasks, strict=True):
                ready = asyncio.ensure_future(service.ready.wait())
                await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
                ready.cancel()
                if task.done():
                    task.result()  # its failure, raised here
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
