"""Redis Streams primitives: publish config events, create groups, encode outcomes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import ResponseError

from core.redis_client import unavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.keys import KeySpace
    from schemas.events import ConfigEvent

__all__ = [
    "APPLIERS",
    "AUDITORS",
    "EVENT_FIELD",
    "ensure_group",
    "now_ms",
    "publish",
    "publish_many",
]

APPLIERS = "appliers"  #: the consumer group that applies config entries
AUDITORS = "audit"  #: the consumer group that traces and logs audit entries
EVENT_FIELD = "event"  #: every entry carries its JSON in this one field

_encoder = msgspec.json.Encoder()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


async def publish(redis: Redis, keys: KeySpace, event: ConfigEvent, maxlen: int) -> str:
    """Append one config event; returns its entry id (which orders it)."""
    entry_id = await unavailable(
        lambda: redis.xadd(
            keys.config_stream,
            {EVENT_FIELD: _encoder.encode(event)},
            maxlen=maxlen,
            approximate=True,
        ),
        "publish",
    )
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def publish_many(
    redis: Redis, keys: KeySpace, events: list[ConfigEvent], maxlen: int
) -> list[str]:
    """Append many config events in one pipelined round trip, in order."""
    pipe = redis.pipeline(transaction=False)
    for event in events:
        pipe.xadd(
            keys.config_stream,
            {EVENT_FIELD: _encoder.encode(event)},
            maxlen=maxlen,
            approximate=True,
        )
    ids = await unavailable(pipe.execute, "publish")
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


async def ensure_group(redis: Redis, stream: str, group: str, start: str = "0") -> None:
    """Create ``group`` on ``stream`` (and the stream); an existing group is fine."""
    try:
        await redis.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
