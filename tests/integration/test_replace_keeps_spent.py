"""Replacing a limit with the same algorithm keeps what the caller has spent."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from core.config_store import ConfigStore
from core.limiter import Limiter
from schemas.limits import ALGORITHMS, Algorithm, Limit

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.gateway import Gateway
    from core.keys import KeySpace

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_raising_and_lowering_a_limit_keeps_the_spent_tokens(
    redis: Redis, keys: KeySpace, algorithm: Algorithm, gateway: Gateway
) -> None:
    store = ConfigStore(gateway, keys, 60_000)
    limiter = Limiter(gateway, keys, Limit(10, 1000))
    await store.apply("k", Limit(10, 60_000, algorithm))
    for _ in range(3):
        assert (await limiter.check("k")).allowed

    await store.apply("k", Limit(20, 60_000, algorithm))
    assert (await limiter.status("k")).remaining == 17  # 3 spent, the room is new

    await store.apply("k", Limit(5, 60_000, algorithm))
    assert (await limiter.status("k")).remaining == 2  # still 3 spent

    await store.apply("k", Limit(2, 60_000, algorithm))
    status = await limiter.status("k")
    assert status.remaining == 0  # in debt: 3 spent of 2
    assert not (await limiter.check("k")).allowed


async def test_a_new_algorithm_starts_full(redis: Redis, keys: KeySpace, gateway: Gateway) -> None:
    store = ConfigStore(gateway, keys, 60_000)
    limiter = Limiter(gateway, keys, Limit(10, 1000))
    await store.apply("k", Limit(10, 60_000, "token_bucket"))
    await limiter.check("k", 4)
    await store.apply("k", Limit(10, 60_000, "gcra"))
    assert (await limiter.status("k")).remaining == 10
