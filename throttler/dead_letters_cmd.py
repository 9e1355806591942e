"""``throttler dead-letters``: list the config entries no worker could apply; replay them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from core.keys import KeySpace
from core.redis_client import connect
from core.streams import EVENT_FIELD
from schemas.events import DeadLetter

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["list_dead_letters", "replay_dead_letters"]

_decoder = msgspec.json.Decoder(DeadLetter)
_encoder = msgspec.json.Encoder()


async def list_dead_letters(settings: Settings, count: int) -> int:
    """Print one JSON line per dead letter: its id in the dead-letter stream and contents."""
    redis = connect(settings)
    keys = KeySpace(settings.key_prefix)
    try:
        rows: Any = await redis.xrange(keys.dead_stream, count=count)
    finally:
        await redis.aclose()
    for raw_id, fields in rows:
        letter = _decoder.decode(fields[EVENT_FIELD.encode()])
        entry = {"id": raw_id.decode(), **msgspec.to_builtins(letter)}
        print(_encoder.encode(entry).decode())
    return 0


async def replay_dead_letters(settings: Settings, ids: list[str], replay_all: bool) -> int:
    """Publish dead letters again as new config entries and remove them from the dead stream.

    A replayed change gets a new (newer) entry id, so it applies over anything published
    meanwhile: replay only what should still win.
    """
    redis = connect(settings)
    keys = KeySpace(settings.key_prefix)
    try:
        if replay_all:
            rows: Any = await redis.xrange(keys.dead_stream)
        else:
            rows = []
            for entry_id in ids:
                rows += await redis.xrange(keys.dead_stream, min=entry_id, max=entry_id)
            missing = set(ids) - {r[0].decode() for r in rows}
            if missing:
                print(f"not in the dead-letter stream: {' '.join(sorted(missing))}")
                return 1
        for raw_id, fields in rows:
            letter = _decoder.decode(fields[EVENT_FIELD.encode()])
            new_id: Any = await redis.xadd(
                keys.config_stream,
                dict(letter.fields),  # type: ignore[arg-type]
                maxlen=settings.stream_maxlen,
                approximate=True,
            )
            await redis.xdel(keys.dead_stream, raw_id)
            print(f"replayed {raw_id.decode()} (was {letter.config_id}) as {new_id.decode()}")
    finally:
        await redis.aclose()
    return 0
