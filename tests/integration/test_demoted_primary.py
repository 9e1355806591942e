"""What a failover leaves behind: connections to a server that is a replica now.

Sentinel (or an operator) demotes the old primary; a connection still open to it gets
``READONLY`` for every write and a PING would still answer. The check lanes drop such a
connection so the next call connects afresh (through Sentinel: to the new primary), and
readiness through Sentinel counts only a primary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis

from core.errors import RedisUnavailableError
from core.gateway import Gateway
from core.scripts import Script
from core.sentinel import is_primary
from core.settings import load_settings
from tests.support.servers import RedisProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.anyio

WRITE = Script.from_source("write", "return redis.call('INCR', KEYS[1])")


@pytest.fixture
def replica(own_redis: RedisProcess) -> Iterator[RedisProcess]:
    server = RedisProcess(extra=["--replicaof", "127.0.0.1", str(own_redis.port)]).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def watcher(replica: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(replica.url)
    yield client
    await client.aclose()


async def _connections(client: Redis) -> int:
    stats: Any = await client.info("stats")
    return int(stats["total_connections_received"])


async def test_a_readonly_reply_drops_the_lane_connection(
    replica: RedisProcess, watcher: Redis, prefix: str
) -> None:
    settings = load_settings(
        {"REDIS_URL": replica.url, "KEY_PREFIX": prefix, "BREAKER_FAILURES": "100"},
        env_file=None,
    )
    gateway = Gateway(settings)
    try:
        await _connections(watcher)  # the watcher's own connection is made
        for _ in range(3):
            before = await _connections(watcher)
            with pytest.raises(RedisUnavailableError, match="ReadOnlyError"):
                await gateway.run(WRITE, [f"{prefix}:k"], [])
            # every call met a fresh connection: the one that answered READONLY was dropped
            assert await _connections(watcher) == before + 1
    finally:
        await gateway.aclose()


async def test_only_a_primary_counts_as_reachable(own_redis: RedisProcess, watcher: Redis) -> None:
    primary = Redis.from_url(own_redis.url)
    try:
        assert await is_primary(primary)
        assert not await is_primary(watcher)
        assert await watcher.ping()  # which PING alone would not have told
    finally:
        await primary.aclose()


async def test_an_acl_user_without_role_is_ready_by_ping(own_redis: RedisProcess) -> None:
    admin = Redis.from_url(own_redis.url)
    command: Any = admin.execute_command
    await command("ACL", "SETUSER", "no-role", "on", ">pw", "+ping", "+hello", "+client")
    limited = Redis.from_url(f"redis://no-role:pw@127.0.0.1:{own_redis.port}/0")
    try:
        assert await is_primary(limited)
    finally:
        await command("ACL", "DELUSER", "no-role")
        await limited.aclose()
        await admin.aclose()
