"""In-process micro-benchmarks (pytest-benchmark), run by ``make bench``, not ``make test``.

64 concurrent tasks each make checks on their own keys, through Throttler's Limiter (which
pipelines the calls of each event-loop turn) and through the ``limits`` library's asyncio
client, on the same algorithm and limit, against the same real Redis. A round is
``TASKS * PER_TASK`` checks; ``extra_info["calls"]`` lets the harness turn time into calls/s.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeAlias

import pytest

from core.gateway import Gateway
from core.keys import KeySpace
from core.limiter import Limiter
from core.settings import load_settings
from schemas.limits import Algorithm, Limit

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

TASKS, PER_TASK = 64, 50
LIMIT = Limit(requests=100_000, window_ms=60_000)  # never denies here: every call spends

Check: TypeAlias = "Callable[[str], Awaitable[Any]]"


def _rounds(benchmark: Any, client: AbstractAsyncContextManager[Check], name: str) -> None:
    with asyncio.Runner() as runner:
        check = runner.run(client.__aenter__())
        counter = iter(range(10**9))

        async def one_round() -> None:
            async def task(n: int) -> None:
                for i in range(PER_TASK):
                    await check(f"{name}-{n}-{i % 10}-{next(counter) % 1000}")

            await asyncio.gather(*(task(n) for n in range(TASKS)))

        try:
            runner.run(one_round())  # warm-up: connections, scripts
            benchmark.extra_info["calls"] = TASKS * PER_TASK
            benchmark.pedantic(lambda: runner.run(one_round()), rounds=15, iterations=1)
        finally:
            runner.run(client.__aexit__(None, None, None))


class _Throttler:
    def __init__(self, url: str, algorithm: Algorithm) -> None:
        self.gateway = Gateway(load_settings({"REDIS_URL": url}, env_file=None))
        limit = Limit(LIMIT.requests, LIMIT.window_ms, algorithm)
        self.limiter = Limiter(self.gateway, KeySpace(f"bench-{algorithm}"), limit)

    async def __aenter__(self) -> Check:
        return self.limiter.check

    async def __aexit__(self, *_: object) -> None:
        await self.gateway.aclose()


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
def test_throttler_64_tasks(benchmark: Any, redis_url: str, algorithm: Algorithm) -> None:
    _rounds(benchmark, _Throttler(redis_url, algorithm), algorithm)


class _Limits:
    def __init__(self, url: str, strategy: str) -> None:
        self.url, self.strategy = url.replace("redis://", "async+redis://"), strategy

    async def __aenter__(self) -> Check:
        from limits import RateLimitItemPerMinute
        from limits.aio import storage, strategies

        self.storage = storage.RedisStorage(self.url, implementation="redispy", socket_timeout=10)
        limiter = getattr(strategies, f"{self.strategy}RateLimiter")(self.storage)
        item = RateLimitItemPerMinute(LIMIT.requests)

        def hit(key: str) -> Awaitable[Any]:
            return limiter.hit(item, key)  # type: ignore[no-any-return]

        return hit

    async def __aexit__(self, *_: object) -> None:
        await self.storage.bridge.storage.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("strategy", ["FixedWindow", "MovingWindow"])
def test_limits_64_tasks(benchmark: Any, redis_url: str, strategy: str) -> None:
    _rounds(benchmark, _Limits(redis_url, strategy), strategy)
