"""Dead letters: config entries no worker could apply. List them; replay them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec

from core.gateway import text
from core.streams import EVENT_FIELD
from schemas.events import DeadLetter, DeadLetterEntry

if TYPE_CHECKING:
    from core.gateway import Gateway
    from core.keys import KeySpace

__all__ = ["Replayed", "list_dead_letters", "replay_dead_letters"]

_decoder = msgspec.json.Decoder(DeadLetter)
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_U64 = 2**64 - 1


def _is_entry_id(entry_id: str) -> bool:
    if not _ENTRY_ID.fullmatch(entry_id):
        return False
    ms, seq = entry_id.split("-")
    return int(ms) <= _U64 and int(seq) <= _U64


class Replayed(msgspec.Struct):
    dead_id: str
    config_id: str
    new_id: str


async def list_dead_letters(
    gateway: Gateway, keys: KeySpace, count: int = 100
) -> list[DeadLetterEntry]:
    """The oldest ``count`` dead letters with their ids in the dead-letter stream."""
    rows: Any = await gateway.call("dead", gateway.client.xrange, keys.dead_stream, count=count)
    return [DeadLetterEntry(text(i), _decoder.decode(f[EVENT_FIELD.encode()])) for i, f in rows]


async def replay_dead_letters(
    gateway: Gateway, keys: KeySpace, ids: list[str] | None, maxlen: int
) -> tuple[list[Replayed], list[str]]:
    """Publish dead letters again as new config entries and remove them from the dead stream.

    ``ids`` None replays all. A replayed change gets a new (newer) entry id, so it applies
    over anything published meanwhile: replay only what should still win. Returns what
    was replayed and the ids that were not found.
    """
    redis = gateway.client
    rows: Any
    if ids is None:
        rows = await gateway.call("dead", redis.xrange, keys.dead_stream)
    else:
        rows = []
        # Only whole entry ids reach XRANGE: it would refuse "abc" and read a bare
        # millisecond as every entry of that millisecond.
        for entry_id in filter(_is_entry_id, ids):
            rows += await gateway.call(
                "dead", redis.xrange, keys.dead_stream, min=entry_id, max=entry_id
            )
    found = {text(r[0]) for r in rows}
    missing = [i for i in (ids or []) if i not in found]
    done = []
    for raw_id, fields in rows:
        letter = _decoder.decode(fields[EVENT_FIELD.encode()])
        new_id: Any = await gateway.call(
            "publish",
            redis.xadd,
            keys.config_stream,
            dict(letter.fields),
            maxlen=maxlen,
            approximate=True,
        )
        await gateway.call("dead", redis.xdel, keys.dead_stream, raw_id)
        done.append(Replayed(text(raw_id), letter.config_id, text(new_id)))
    return done, missing
