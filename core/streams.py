"""Redis Streams primitives: publish config events, create groups, encode outcomes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import ResponseError

from core.gateway import text

if TYPE_CHECKING:
    from collections.abc import Sequence

    from core.gateway import Gateway
    from core.keys import KeySpace
    from schemas.events import ConfigEvent, KeyEvent, PolicyEvent, RlsDomainEvent

__all__ = [
    "EVENT_FIELD",
    "ensure_group",
    "now_ms",
    "publish",
    "publish_many",
]

EVENT_FIELD = "event"  #: every entry carries its JSON in this one field

_encoder = msgspec.json.Encoder()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


async def publish(gateway: Gateway, keys: KeySpace, event: ConfigEvent, maxlen: int) -> str:
    """Append one config event; returns its entry id (which orders it)."""
    entry_id = await gateway.call(
        "publish",
        gateway.client.xadd,
        keys.config_stream,
        {EVENT_FIELD: _encoder.encode(event)},
        maxlen=maxlen,
        approximate=True,
    )
    return text(entry_id)


async def publish_many(
    gateway: Gateway,
    keys: KeySpace,
    events: Sequence[KeyEvent | PolicyEvent | RlsDomainEvent],
    maxlen: int,
) -> list[str]:
    """Append many config events in one pipelined round trip, in order."""
    pipe = gateway.client.pipeline(transaction=False)
    for event in events:
        pipe.xadd(
            keys.config_stream,
            {EVENT_FIELD: _encoder.encode(event)},
            maxlen=maxlen,
            approximate=True,
        )
    ids = await gateway.call("publish", pipe.execute)
    return [text(i) for i in ids]


async def ensure_group(gateway: Gateway, stream: str, group: str, start: str = "0") -> None:
    """Create ``group`` on ``stream`` (and the stream); an existing group is fine."""
    try:
        create = gateway.client.xgroup_create
        await gateway.call("group", create, stream, group, start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
