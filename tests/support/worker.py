"""A config worker running in the test's own event loop for the length of a block."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from core.gateway import Gateway
from core.keys import KeySpace
from workers.runner import Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from core.settings import Settings

__all__ = ["running_worker"]


@asynccontextmanager
async def running_worker(settings: Settings, consumer: str = "test") -> AsyncIterator[Worker]:
    gateway = Gateway(settings)
    worker = Worker(gateway, KeySpace(*settings.keyspace_args), settings, consumer)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            yield worker
            worker.stop()
    finally:
        await gateway.aclose()
