"""Reclaim entries that a dead or stuck consumer left pending (XAUTOCLAIM).

An entry idle longer than ``WORKER_CLAIM_IDLE_MS`` is claimed by this consumer and handled
again; one delivered more than ``WORKER_MAX_DELIVERIES`` times goes to the dead-letter
stream instead (the applier decides, from the delivery counts read here).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from core.redis_client import unavailable
from core.streams import APPLIERS

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.keys import KeySpace
    from workers.applier import Applier, Entry

__all__ = ["Reclaimer"]

_log = logging.getLogger("throttler.worker")


class Reclaimer:
    def __init__(
        self, redis: Redis, keys: KeySpace, applier: Applier, *, idle_ms: int, batch: int
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._applier = applier
        self._idle_ms = idle_ms
        self._batch = batch

    async def run_once(self) -> int:
        """One pass over the whole pending list; returns how many entries were finished."""
        stream, consumer = self._keys.config_stream, self._applier.consumer
        cursor: bytes | str = "0-0"
        finished = 0
        while True:
            reply: Any = await unavailable(
                partial(
                    self._redis.xautoclaim,
                    stream,
                    APPLIERS,
                    consumer,
                    self._idle_ms,
                    start_id=cursor,
                    count=self._batch,
                ),
                "reclaim",
            )
            cursor, entries = reply[0], reply[1]
            gone = reply[2] if len(reply) > 2 else []
            entries = [e for e in entries if e[1] is not None]
            if entries:
                _log.info("reclaimed %d pending config entries", len(entries))
                finished += await self._applier.handle(entries, await self._deliveries(entries))
            if gone:
                # Trimmed away while pending: nothing left to apply; drop them from the PEL.
                await unavailable(partial(self._redis.xack, stream, APPLIERS, *gone), "ack")
            if cursor in (b"0-0", "0-0"):
                return finished

    async def _deliveries(self, entries: list[Entry]) -> dict[str, int]:
        ids = [e[0].decode() if isinstance(e[0], bytes) else e[0] for e in entries]
        rows = await unavailable(
            lambda: self._redis.xpending_range(
                self._keys.config_stream,
                APPLIERS,
                min=ids[0],
                max=ids[-1],
                count=max(10_000, 10 * len(ids)),
                consumername=self._applier.consumer,
            ),
            "pending",
        )
        counts: dict[str, int] = {}
        for row in rows:
            mid = row["message_id"]
            counts[mid.decode() if isinstance(mid, bytes) else str(mid)] = int(
                row["times_delivered"]
            )
        return counts
