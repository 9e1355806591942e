"""What the routes need, built once per process at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.redis_client import unavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.config_store import ConfigStore
    from core.keys import KeySpace
    from core.limiter import Limiter
    from core.settings import Settings

__all__ = ["Services"]


@dataclass(slots=True)
class Services:
    settings: Settings
    keys: KeySpace
    redis: Redis
    limiter: Limiter
    config: ConfigStore

    async def ping(self) -> bool:
        return bool(await unavailable(self.redis.ping, "ping"))
