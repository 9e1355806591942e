"""Clients of a primary watched by Redis Sentinel: every new connection asks where it is.

redis-py's Sentinel pool asks the Sentinels for the primary's address on each new
connection, and drops a connection whose server answers ``READONLY`` (a demoted
primary). Everything this process opens goes through one such pool, so all of it
follows a failover without a restart:

* pooled commands (config path, streams, the worker's blocking reads, probes, the CLI):
  a dead connection is replaced on the next command, at the address the Sentinels give;
* Pub/Sub: the hub's resubscribe loop reconnects the same way;
* the check lanes (:mod:`core.lanes`) make their connection with the pool's
  ``make_connection``: reconnecting after an error asks the Sentinels again.

While the primary is down and not yet replaced, the Sentinels still name it (until
``down-after-milliseconds``) or name none (until the promotion): connecting fails at once,
the caller sees :class:`~core.errors.RedisUnavailableError` and ``FAILURE_POLICY`` decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import NoPermissionError

from core.sentinel_url import parse_sentinel_url

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["is_primary", "sentinel_client"]


class _PrimaryPool(SentinelConnectionPool, BlockingConnectionPool):
    """The Sentinel pool, blocking (as the plain pool of :func:`core.gateway.make_client`):
    past ``max_connections`` a command waits for a free connection rather than failing.
    Closing it closes the Sentinel connections it asked through too."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def sentinel_client(settings: Settings, url: str, options: dict[str, Any]) -> Redis:
    """A client of the primary named by the ``redis+sentinel://`` ``url``.

    ``options`` are the data connections' (timeouts, pool size, retries) as
    :func:`core.gateway.make_client` sets them; the Sentinel connections get the same
    timeouts and retries, and ``REDIS_SENTINEL_USERNAME``/``_PASSWORD``.
    """
    target = parse_sentinel_url(url)
    # URL options (ssl_ca_certs=..., ...) as redis-py reads them from a redis:// URL.
    extra: dict[str, Any] = dict(parse_url(f"redis://_/?{target.query}")) if target.query else {}
    extra.pop("host", None)
    pool_size = extra.pop("max_connections", options["max_connections"])
    # As in a redis:// URL, a query value wins over the same thing elsewhere in the URL.
    db = extra.pop("db", target.db)
    username = extra.pop("username", target.username)
    password = extra.pop("password", target.password)
    tls = {k: v for k, v in extra.items() if k.startswith("ssl")}
    sentinel_options: dict[str, Any] = {
        "socket_timeout": options["socket_connect_timeout"],
        "socket_connect_timeout": options["socket_connect_timeout"],
        "retry": options["retry"],
        "username": settings.redis_sentinel_username,
        "password": settings.redis_sentinel_password,
    }
    if target.tls:
        sentinel_options.update(ssl=True, **tls)
    manager = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    node_options = {k: v for k, v in options.items() if k != "max_connections"}
    node_options.update(extra)
    pool = _PrimaryPool(  # type: ignore[no-untyped-call]
        target.service,
        manager,
        max_connections=pool_size,
        db=db,
        username=username,
        password=password,
        ssl=target.tls,
        **node_options,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


async def is_primary(client: Redis) -> bool:
    """True when ``client`` reaches a primary (``ROLE``), not a replica.

    A connection to a demoted primary would still answer PING; when it is one, the pool's
    idle connections are dropped so that the next ones ask the Sentinels again. An ACL
    user not allowed ``ROLE`` gets the PING answer (docs/operations.md says to allow it).
    """
    try:
        role: Any = await client.execute_command("ROLE")  # type: ignore[no-untyped-call]
    except NoPermissionError:  # an ACL user without +role: a PING is all we may ask
        return bool(await client.ping())
    name = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
    if name == "master":
        return True
    await client.connection_pool.disconnect(inuse_connections=False)
    return False
