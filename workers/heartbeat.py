"""A heartbeat key per consumer, refreshed well within its TTL; probes read it."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from core.streams import encode, now_ms

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.keys import KeySpace

__all__ = ["Heartbeat", "any_alive", "default_consumer_name", "is_alive"]


def default_consumer_name() -> str:
    """``<hostname>-<pid>``: unique per process, and grouped by host for probes."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Heartbeat:
    def __init__(self, redis: Redis, keys: KeySpace, group: str, consumer: str, ttl_ms: int):
        self._redis = redis
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
        await self._redis.set(self.key, value, px=self._ttl_ms)

    async def stop(self) -> None:
        await self._redis.delete(self.key)


async def is_alive(redis: Redis, keys: KeySpace, group: str, consumer: str | None) -> list[str]:
    """Heartbeat keys alive for ``consumer``, or for any consumer on this host."""
    if consumer is not None:
        key = keys.heartbeat(group, consumer)
        return [key] if await redis.exists(key) else []
    pattern = keys.heartbeat(group, f"{socket.gethostname()}-*")
    found = [k.decode() if isinstance(k, bytes) else k async for k in redis.scan_iter(pattern)]
    return sorted(found)


async def any_alive(redis: Redis, keys: KeySpace, group: str) -> bool:
    """True when any consumer of ``group``, on any host, has a live heartbeat."""
    async for _ in redis.scan_iter(keys.heartbeat(group, "*"), count=1000):
        return True
    return False
