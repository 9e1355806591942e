"""Redis connections: one client per process, every call bounded by a timeout.

Driver exceptions are translated here, once, into :class:`RedisUnavailableError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import (
    ClusterDownError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from core.errors import RedisUnavailableError
from core.settings import Settings, redact_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["UNAVAILABLE_ERRORS", "connect", "unavailable"]

T = TypeVar("T")

#: What counts as "Redis could not answer" (as opposed to a bug or a bad command).
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    OSError,
)


def connect(settings: Settings, url: str | None = None) -> Redis:
    """A client for ``url`` (default ``REDIS_URL``) with the configured timeouts.

    With ``REDIS_CLUSTER=true`` the client is a :class:`RedisCluster`; it offers the same
    commands for everything this project uses, so it is typed as :class:`Redis`.
    """
    target = url or settings.redis_url
    if target is None:
        raise RedisUnavailableError("REDIS_URL is not set")
    timeout = settings.redis_timeout_ms / 1000
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "max_connections": settings.redis_max_connections,
        "health_check_interval": 0,
    }
    if settings.redis_cluster:
        cluster: Any = RedisCluster.from_url(target, **options)
        client: Redis = cluster
        return client
    return Redis.from_url(target, retry_on_timeout=False, **options)


async def unavailable(call: Callable[[], Awaitable[T]], what: str = "redis") -> T:
    """Await ``call()``; a connection or timeout error becomes RedisUnavailableError."""
    try:
        return await call()
    except UNAVAILABLE_ERRORS as exc:
        raise RedisUnavailableError(f"{what}: {type(exc).__name__}: {exc}") from exc


def describe(settings: Settings) -> str:
    """The Redis target as it may appear in a log line (password redacted)."""
    return redact_url(settings.redis_url) or "(embedded)"
