"""Edges of the check path: peeks with an inline limit, and a Redis that refuses writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from redis.exceptions import ReadOnlyError

from core.embedded import free_port
from core.settings import load_settings
from tests.support.servers import RedisProcess
from throttler.cli import build_app

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window", "fixed_window", "gcra"])
async def test_a_peek_with_an_inline_limit_creates_nothing(
    client: AsyncTestClient[Any], algorithm: str
) -> None:
    spent = await client.post("/rate-limit/peeked/check", json={"tokens": 50})
    assert spent.json()["remaining"] == 50  # the default limit (100, refilling 10/s)
    inline = {"tokens": 0, "requests": 3, "window_ms": 60000, "algorithm": algorithm}
    peek = await client.post("/rate-limit/peeked/check", json=inline)
    assert peek.status_code == 200
    assert (peek.json()["limit"], peek.json()["allowed"]) == (3, True)
    assert (await client.get("/rate-limit/peeked")).json()["source"] == "default"  # none stored
    # ...and what was spent under the default limit is still spent (less what refilled
    # meanwhile: 10/s, so a full bucket would take 5 s however slow the machine is).
    after = await client.post("/rate-limit/peeked/check", json={"tokens": 0})
    assert 50 <= after.json()["remaining"] < 100


@pytest.fixture
def replica() -> Iterator[RedisProcess]:
    """A read-only replica, as a demoted master is after a failover: writes are refused."""
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.close()


async def test_a_redis_that_refuses_writes_is_unavailable_not_an_internal_error(
    replica: RedisProcess, prefix: str
) -> None:
    admin = Redis.from_url(replica.url)
    try:
        # Follow a master that does not exist: the server turns into a read-only replica.
        await admin.replicaof("127.0.0.1", free_port())
        with pytest.raises(ReadOnlyError):
            await admin.set("probe", 1)
    finally:
        await admin.aclose()
    settings = load_settings(
        {"REDIS_URL": replica.url, "KEY_PREFIX": prefix, "WORKER_BLOCK_MS": "50"},
        env_file=None,
    )
    async with AsyncTestClient(app=build_app(settings, worker=False)) as client:
        single = await client.post("/rate-limit/k/check")
        assert (single.status_code, single.json()["error"]) == (503, "redis_unavailable")
        batch = await client.post("/check", json={"checks": [{"key": "k"}]})
        assert (batch.status_code, batch.json()["error"]) == (503, "redis_unavailable")
