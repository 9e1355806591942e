"""The auto-pipelined check path: exact under concurrency, errors confined to their batch."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from core.errors import RedisUnavailableError
from core.gateway import Gateway
from core.limiter import Limiter
from core.scripts import CHECK
from core.settings import load_settings
from schemas.limits import ALGORITHMS, Algorithm, Limit

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.keys import KeySpace
    from tests.support.servers import RedisProcess

pytestmark = pytest.mark.anyio


def _gateway(url: str, **env: str) -> Gateway:
    return Gateway(load_settings({"REDIS_URL": url, **env}, env_file=None))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_concurrent_checks_admit_exactly_the_limit(
    gateway: Gateway, keys: KeySpace, algorithm: Algorithm
) -> None:
    limiter = Limiter(gateway, keys, Limit(100, 1000))
    inline = Limit(50, 86_400_000, algorithm)
    results = await asyncio.gather(*(limiter.check("hot", 1, inline) for _ in range(200)))
    assert sum(r.allowed for r in results) == 50
    # 200 concurrent checks needed far fewer round trips than checks.
    assert gateway.writes < 20


async def test_one_turn_is_one_round_trip(gateway: Gateway, keys: KeySpace) -> None:
    limiter = Limiter(gateway, keys, Limit(1000, 1000))
    await limiter.check("warm-up")  # connects
    before = gateway.writes
    await asyncio.gather(*(limiter.check(f"k{i}") for i in range(64)))
    assert gateway.writes - before == 1


async def test_a_failed_round_trip_fails_only_the_checks_it_carried(
    own_redis: RedisProcess, keys: KeySpace
) -> None:
    gateway = _gateway(own_redis.url, REDIS_TIMEOUT_MS="1000", BREAKER_FAILURES="1000")
    try:
        limiter = Limiter(gateway, keys, Limit(1000, 1000))
        ok = await asyncio.gather(*(limiter.check(f"k{i}") for i in range(10)))
        assert all(r.allowed for r in ok)

        own_redis.stop()
        failed = await asyncio.gather(
            *(limiter.check(f"k{i}") for i in range(10)), return_exceptions=True
        )
        assert all(isinstance(f, RedisUnavailableError) for f in failed)

        own_redis.start()  # same port: the next batch carries on
        again = await asyncio.gather(*(limiter.check(f"k{i}") for i in range(10)))
        assert all(r.allowed for r in again)
    finally:
        await gateway.aclose()


async def test_a_reply_error_fails_only_its_own_call(
    gateway: Gateway, redis: Redis, keys: KeySpace
) -> None:
    # A key of the wrong type makes that one script call fail inside the pipeline.
    await redis.set(keys.limit("broken"), "not a hash")
    limiter = Limiter(gateway, keys, Limit(10, 1000))
    await limiter.check("warm-up")
    before = gateway.writes
    calls = [limiter.script_args(k, 1) for k in ("fine-1", "broken", "fine-2")]
    replies = await gateway.run_many(CHECK, calls)
    assert not isinstance(replies[0], BaseException)
    assert isinstance(replies[1], Exception)
    assert "WRONGTYPE" in str(replies[1])
    assert not isinstance(replies[2], BaseException)
    assert gateway.writes - before == 1


async def test_connection_error_reaches_every_caller_of_the_batch(keys: KeySpace) -> None:
    gateway = _gateway("redis://127.0.0.1:1")  # nothing listens
    try:
        limiter = Limiter(gateway, keys, Limit(10, 1000))
        calls = [limiter.script_args(f"k{i}", 1) for i in range(5)]
        replies = await gateway.run_many(CHECK, calls)
        assert all(isinstance(r, RedisUnavailableError) for r in replies)
    finally:
        await gateway.aclose()
