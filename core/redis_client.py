"""Redis connections: one client per process, every call bounded by a timeout.

Driver exceptions are translated here, once, into :class:`RedisUnavailableError`.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from contextlib import suppress
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)
from redis.maint_notifications import MaintNotificationsConfig

from core.errors import RedisUnavailableError
from core.settings import Settings, redact_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = [
    "UNAVAILABLE_ERRORS",
    "cluster_concurrency",
    "connect",
    "is_cluster",
    "prepare",
    "unavailable",
]

if TYPE_CHECKING:
    from core.metrics import Metrics

T = TypeVar("T")

#: What counts as "Redis could not answer" (as opposed to a bug or a bad command): also a
#: full Redis (noeviction), a demoted master after a failover, a master that is down.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    OutOfMemoryError,
    ReadOnlyError,
    MasterDownError,
    OSError,
)


def connect(settings: Settings, url: str | None = None, *, blocking_ms: int = 0) -> Redis:
    """A client for ``url`` (default ``REDIS_URL``) with the configured timeouts.

    ``blocking_ms`` lengthens the read timeout for clients that issue blocking commands
    (``XREADGROUP ... BLOCK``), which must not time out before the server answers.
    With ``REDIS_CLUSTER=true`` the client is a :class:`RedisCluster`; it offers the same
    commands for everything this project uses, so it is typed as :class:`Redis`.
    """
    target = url or settings.redis_url
    if target is None:
        raise RedisUnavailableError("REDIS_URL is not set")
    timeout = settings.redis_timeout_ms / 1000
    options: dict[str, Any] = {
        "socket_timeout": timeout + blocking_ms / 1000,
        "socket_connect_timeout": timeout,
        "max_connections": settings.redis_max_connections,
        "health_check_interval": 0,
        # No silent retries (redis-py retries 10 times with backoff by default): a failed
        # call fails at once and the circuit breaker and FAILURE_POLICY decide what next.
        # A retry could also run a check twice when a connection dies after the script ran.
        # Dead pooled connections are caught before use instead (see the pool below).
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.redis_cluster:
        cluster: Any = RedisCluster.from_url(target, **options)
        # Half the pool per node: room for the worker, probes and pub/sub beside checks.
        _cluster_limits[cluster] = asyncio.Semaphore(max(1, settings.redis_max_connections // 2))
        client: Redis = cluster
        return client
    # A blocking pool: past max_connections a call waits (up to the timeout) for a free
    # connection instead of failing at once with "Too many connections".
    # Maintenance notifications (a RESP3 feature of managed Redis offerings) stay off: while
    # they are on - redis-py 8.1 defaults them to "auto" - the pool skips its check that an
    # idle connection is still open, so the first command after a Redis restart or failover
    # failed on a dead socket ("Connection closed by server", /ready flapping to 503).
    pool = BlockingConnectionPool.from_url(
        target,
        timeout=timeout,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
        **options,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


_cluster_limits: weakref.WeakKeyDictionary[object, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def cluster_concurrency(client: object) -> asyncio.Semaphore:
    """Bounds the commands a process sends at once to a cluster client: its node pools
    refuse (MaxConnectionsError) rather than wait once REDIS_MAX_CONNECTIONS are in use."""
    limit = _cluster_limits.get(client)
    if limit is None:
        limit = _cluster_limits[client] = asyncio.Semaphore(32)
    return limit


async def prepare(client: Redis) -> None:
    """Make a cluster client learn the cluster's layout before any concurrent use.

    redis-py's asyncio cluster client initializes lazily; many first commands at once race
    that initialization, and a connection error makes it re-initialize, disconnecting the
    connections other commands are using: under load one error became hundreds. Errors are
    left to the first real command (Redis may be down at start-up).
    """
    if is_cluster(client):
        cluster: Any = client
        with suppress(*UNAVAILABLE_ERRORS):
            await cluster.initialize()


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client (pipelines there refuse scripts and PUBLISH)."""
    return isinstance(client, RedisCluster)


async def unavailable(
    call: Callable[[], Awaitable[T]], what: str = "redis", metrics: Metrics | None = None
) -> T:
    """Await ``call()``; a connection or timeout error becomes RedisUnavailableError.

    With ``metrics``, the call's duration and failures are recorded under ``what``.
    """
    if metrics is None:
        try:
            return await call()
        except UNAVAILABLE_ERRORS as exc:
            raise RedisUnavailableError(f"{what}: {type(exc).__name__}: {exc}") from exc
    started = time.perf_counter()
    try:
        return await call()
    except UNAVAILABLE_ERRORS as exc:
        metrics.redis_errors.labels(what).inc()
        raise RedisUnavailableError(f"{what}: {type(exc).__name__}: {exc}") from exc
    finally:
        metrics.redis_duration.labels(what).observe(time.perf_counter() - started)


def describe(settings: Settings) -> str:
    """The Redis target as it may appear in a log line (password redacted)."""
    return redact_url(settings.redis_url) or "(embedded)"
