"""Auto-pipelining: the concurrent script calls of one process share a round trip.

Calls made during one turn of the event loop are queued; at the end of the turn they go to
Redis as one pipeline (one write, one read), and each caller gets its own reply or error.
Python's cost per call falls from a whole request/response cycle to a share of one, while
each script still runs atomically on its own, so decisions stay exact. A failed round trip
fails only the calls it carried.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.scripts import Script

__all__ = ["AutoPipeline"]

_Call = tuple[list[str], list[Any], "asyncio.Future[Any]"]


class AutoPipeline:
    """Batches calls of one script; ``max_batch`` bounds one round trip."""

    def __init__(self, redis: Redis, script: Script, max_batch: int = 1000) -> None:
        self._redis = redis
        self._script = script
        self._max_batch = max_batch
        self._queue: list[_Call] = []
        self._scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()
        self.round_trips = 0

    async def call(self, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), self._max_batch):
            task = asyncio.get_running_loop().create_task(
                self._send(queue[start : start + self._max_batch])
            )
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _send(self, batch: list[_Call]) -> None:
        self.round_trips += 1
        try:
            replies = await self._script.run_many(self._redis, [(k, a) for k, a, _ in batch])
        except BaseException as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (*_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the caller went away (cancelled)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
