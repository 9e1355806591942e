"""The auto-pipelined check path: exact under concurrency, errors confined to their batch."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from core.errors import RedisUnavailableError
from core.limiter import Limiter
from core.pipelining import AutoPipeline
from core.scripts import CHECK
from schemas.limits import ALGORITHMS, Algorithm, Limit

if TYPE_CHECKING:
    from core.keys import KeySpace
    from tests.support.servers import RedisProcess

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_concurrent_checks_admit_exactly_the_limit(
    redis: Redis, keys: KeySpace, algorithm: Algorithm
) -> None:
    limiter = Limiter(redis, keys, Limit(100, 1000))
    inline = Limit(50, 86_400_000, algorithm)
    results = await asyncio.gather(*(limiter.check("hot", 1, inline) for _ in range(200)))
    assert sum(r.allowed for r in results) == 50
    # 200 concurrent checks needed far fewer round trips than checks.
    assert limiter.round_trips < 20


async def test_one_turn_is_one_round_trip(redis: Redis, keys: KeySpace) -> None:
    limiter = Limiter(redis, keys, Limit(1000, 1000))
    before = limiter.round_trips
    await asyncio.gather(*(limiter.check(f"k{i}") for i in range(64)))
    assert limiter.round_trips - before == 1


async def test_a_failed_round_trip_fails_only_the_checks_it_carried(
    own_redis: RedisProcess, keys: KeySpace
) -> None:
    client = Redis.from_url(own_redis.url, socket_timeout=1)
    try:
        limiter = Limiter(client, keys, Limit(1000, 1000))
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
        await client.aclose()


async def test_a_reply_error_fails_only_its_own_call(redis: Redis, keys: KeySpace) -> None:
    # A state key of the wrong type makes that one script call fail inside the pipeline.
    await redis.set(keys.config("broken"), "not a hash")
    pipeline = AutoPipeline(redis, CHECK)
    limiter = Limiter(redis, keys, Limit(10, 1000))
    calls = [limiter.script_args(k, 1) for k in ("fine-1", "broken", "fine-2")]
    replies = await asyncio.gather(*(pipeline.call(k, a) for k, a in calls), return_exceptions=True)
    assert not isinstance(replies[0], BaseException)
    assert isinstance(replies[1], Exception)
    assert "WRONGTYPE" in str(replies[1])
    assert not isinstance(replies[2], BaseException)
    assert pipeline.round_trips == 1


async def test_connection_error_reaches_every_caller_of_the_batch(keys: KeySpace) -> None:
    client = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)  # nothing listens
    try:
        pipeline = AutoPipeline(client, CHECK)
        limiter = Limiter(client, keys, Limit(10, 1000))
        calls = [limiter.script_args(f"k{i}", 1) for i in range(5)]
        replies = await asyncio.gather(
            *(pipeline.call(k, a) for k, a in calls), return_exceptions=True
        )
        assert all(isinstance(r, RedisConnectionError) for r in replies)
    finally:
        await client.aclose()
