"""``throttler dead-letters``: list the config entries no worker could apply; replay them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from core.dead_letters import list_dead_letters as list_letters
from core.dead_letters import replay_dead_letters as replay_letters
from core.gateway import Gateway
from core.keys import KeySpace

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["list_dead_letters", "replay_dead_letters"]

_encoder = msgspec.json.Encoder()


async def list_dead_letters(settings: Settings, count: int) -> int:
    """Print the dead letters as `GET /dead-letters` answers them: one JSON array, oldest
    first (``[]`` when there are none), each ``{"id", "letter"}``."""
    gateway = Gateway(settings)
    try:
        letters = await list_letters(gateway, KeySpace(*settings.keyspace_args), count)
    finally:
        await gateway.aclose()
    print(_encoder.encode(letters).decode())
    return 0


async def replay_dead_letters(settings: Settings, ids: list[str], replay_all: bool) -> int:
    """Publish dead letters again as new config entries (see core.dead_letters)."""
    gateway = Gateway(settings)
    try:
        done, missing = await replay_letters(
            gateway,
            KeySpace(*settings.keyspace_args),
            None if replay_all else ids,
            settings.stream_maxlen,
        )
    finally:
        await gateway.aclose()
    for item in done:
        print(f"replayed {item.dead_id} (was {item.config_id}) as {item.new_id}")
    if missing:
        print(f"not in the dead-letter stream: {' '.join(missing)}")
        return 1
    return 0
