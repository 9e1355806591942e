"""Reclaim entries that a dead or stuck consumer left pending (XAUTOCLAIM).

An entry idle longer than ``WORKER_CLAIM_IDLE_MS`` is claimed by this consumer and handled
again; one delivered more than ``WORKER_MAX_DELIVERIES`` times goes to the dead-letter
stream instead (the applier decides, from the delivery counts read here).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from core.gateway import text
from core.keys import APPLIERS

if TYPE_CHECKING:
    from core.gateway import Gateway
    from core.keys import KeySpace
    from workers.applier import Applier, Entry

__all__ = ["Reclaimer"]

_log = logging.getLogger("throttler.worker")


class Reclaimer:
    def __init__(
        self, gateway: Gateway, keys: KeySpace, applier: Applier, *, idle_ms: int, batch: int
    ) -> None:
        self._gateway = gateway
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
            reply: Any = await self._gateway.call(
                "reclaim",
                self._gateway.client.xautoclaim,
                stream,
                APPLIERS,
                consumer,
                self._idle_ms,
                start_id=cursor,
                count=self._batch,
            )
            cursor, entries = reply[0], reply[1]
            gone = reply[2] if len(reply) > 2 else []
            entries = [e for e in entries if e[1] is not None]
            if entries:
                _log.info("reclaimed %d pending config entries", len(entries))
                finished += await self._applier.handle(entries, await self._deliveries(entries))
            if gone:
                # Trimmed away while pending: nothing left to apply; drop them from the PEL.
                await self._gateway.call("ack", self._gateway.client.xack, stream, APPLIERS, *gone)
            if cursor in (b"0-0", "0-0"):
                return finished

    async def _deliveries(self, entries: list[Entry]) -> dict[str, int]:
        ids = [text(e[0]) for e in entries]
        rows = await self._gateway.call(
            "pending",
            self._gateway.client.xpending_range,
            self._keys.config_stream,
            APPLIERS,
            min=ids[0],
            max=ids[-1],
            count=max(10_000, 10 * len(ids)),
            consumername=self._applier.consumer,
        )
        return {text(row["message_id"]): int(row["times_delivered"]) for row in rows}
