"""A heartbeat key per consumer, refreshed well within its TTL; probes read it."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from core.gateway import text
from core.streams import encode, now_ms

if TYPE_CHECKING:
    from core.gateway import Gateway
    from core.keys import KeySpace

__all__ = ["Heartbeat", "any_alive", "default_consumer_name", "is_alive"]


def default_consumer_name() -> str:
    """``<hostname>-<pid>``: unique per process, and grouped by host for probes."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Heartbeat:
    def __init__(
        self, gateway: Gateway, keys: KeySpace, group: str, consumer: str, ttl_ms: int
    ) -> None:
        self._gateway = gateway
        self.key = keys.heartbeat(group, consumer)
        self._consumer = consumer
        self._ttl_ms = ttl_ms
        self.started_ms = now_ms()

    @property
    def interval_s(self) -> float:
        return self._ttl_ms / 3000

    async def beat(self, processed: int) -> None:
        value = encode(
            {
                "consumer": self._consumer,
                "pid": os.getpid(),
                "started_at_ms": self.started_ms,
                "beat_at_ms": now_ms(),
                "processed": processed,
            }
        )
        await self._gateway.call(
            "heartbeat", self._gateway.client.set, self.key, value, px=self._ttl_ms
        )

    async def stop(self) -> None:
        await self._gateway.call("heartbeat", self._gateway.client.delete, self.key)


async def is_alive(gateway: Gateway, keys: KeySpace, group: str, consumer: str | None) -> list[str]:
    """Heartbeat keys alive for ``consumer``, or for any consumer on this host."""
    redis = gateway.client
    if consumer is not None:
        key = keys.heartbeat(group, consumer)
        return [key] if await gateway.call("heartbeat", redis.exists, key) else []
    pattern = keys.heartbeat(group, f"{socket.gethostname()}-*")

    async def scan() -> list[str]:
        return sorted([text(k) async for k in redis.scan_iter(pattern)])

    return await gateway.call("heartbeat", scan)


async def any_alive(gateway: Gateway, keys: KeySpace, group: str) -> bool:
    """True when any consumer of ``group``, on any host, has a live heartbeat."""

    async def scan() -> bool:
        async for _ in gateway.client.scan_iter(keys.heartbeat(group, "*"), count=1000):
            return True
        return False

    return await gateway.call("heartbeat", scan)
