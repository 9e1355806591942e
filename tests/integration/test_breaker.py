"""The check path against a real Redis that dies, hangs, comes back empty or loses its
script cache: the limiter, its auto-pipeline and its circuit breaker together."""

from __future__ import annotations

import signal
import statistics
import time
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

from core.errors import RedisUnavailableError
from core.gateway import Gateway
from core.keys import KeySpace
from core.limiter import CheckResult, Limiter
from core.metrics import Metrics
from core.scripts import CHECK
from core.settings import load_settings
from schemas.limits import Limit

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from core.breaker import CircuitBreaker
    from core.settings import Settings
    from tests.support.servers import RedisProcess

pytestmark = pytest.mark.anyio

TIMEOUT_MS = 200
FAILURES = 3
COOLDOWN_MS = 500
DAY_MS = 86_400_000


@pytest.fixture
def own_settings(own_redis: RedisProcess, prefix: str) -> Settings:
    return load_settings(
        {
            "REDIS_URL": own_redis.url,
            "KEY_PREFIX": prefix,
            "REDIS_TIMEOUT_MS": str(TIMEOUT_MS),
            "BREAKER_FAILURES": str(FAILURES),
            "BREAKER_COOLDOWN_MS": str(COOLDOWN_MS),
        },
        env_file=None,
    )


class Rig:
    def __init__(self, settings: Settings) -> None:
        self.metrics = Metrics()
        self.gateway = Gateway(settings, self.metrics)
        default = Limit(requests=1_000_000, window_ms=DAY_MS)
        self.limiter_prefix = settings.key_prefix
        self.limiter = Limiter(self.gateway, KeySpace(settings.key_prefix), default)
        self.breaker: CircuitBreaker = self.gateway.breaker("k")  # one node: one breaker

    async def timed_check(self, key: str = "k") -> tuple[float, CheckResult | Exception]:
        began = time.perf_counter()
        try:
            result: CheckResult | Exception = await self.limiter.check(key)
        except RedisUnavailableError as exc:
            result = exc
        return time.perf_counter() - began, result

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def rig(own_settings: Settings) -> AsyncIterator[Rig]:
    rig = Rig(own_settings)
    try:
        yield rig
    finally:
        await rig.gateway.aclose()


def is_open(breaker: CircuitBreaker) -> bool:
    """(A call, so that mypy does not narrow the property between two asserts.)"""
    return breaker.is_open


async def until_allowed(rig: Rig, within_s: float) -> float:
    """Check until one succeeds; returns how long it took. Fails after ``within_s``."""
    began = time.monotonic()
    while True:
        _, result = await rig.timed_check()
        if isinstance(result, CheckResult):
            return time.monotonic() - began
        assert time.monotonic() - began < within_s, f"no successful check within {within_s} s"
        await anyio.sleep(0.02)


async def test_hung_redis_costs_a_timeout_until_the_circuit_opens_then_nothing(
    rig: Rig, own_redis: RedisProcess
) -> None:
    assert isinstance((await rig.timed_check())[1], CheckResult)
    assert own_redis.proc is not None
    own_redis.proc.send_signal(signal.SIGSTOP)
    try:
        slow = [await rig.timed_check() for _ in range(FAILURES)]
        for took, result in slow:
            assert isinstance(result, RedisUnavailableError)
            # each waited for the socket timeout, and not much longer
            assert TIMEOUT_MS / 1000 * 0.9 <= took < TIMEOUT_MS / 1000 + 0.3, took
        assert is_open(rig.breaker)
        assert rig.sample("throttler_circuit_open") == 1

        fast = [await rig.timed_check() for _ in range(50)]
        assert all(isinstance(r, RedisUnavailableError) for _, r in fast)
        # The open circuit answers without the network: far below the timeout.
        assert statistics.median(t for t, _ in fast) < TIMEOUT_MS / 1000 / 20
        assert rig.sample("throttler_redis_errors_total", operation="check") == FAILURES
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    # Redis answers again: the first probe after the cooldown closes the circuit.
    took = await until_allowed(rig, within_s=COOLDOWN_MS / 1000 + 2)
    assert took < COOLDOWN_MS / 1000 + 1
    assert not is_open(rig.breaker)
    assert rig.sample("throttler_circuit_open") == 0


async def test_redis_restarted_empty_on_the_same_port_is_used_again(
    rig: Rig, own_redis: RedisProcess
) -> None:
    """A restart empties the script cache (as a failover does): EVALSHA answers NOSCRIPT,
    the script is loaded again and the check succeeds, with no new client."""
    assert isinstance((await rig.timed_check())[1], CheckResult)
    own_redis.stop()
    for _ in range(FAILURES + 5):
        took, result = await rig.timed_check()
        assert isinstance(result, RedisUnavailableError)
        assert took < TIMEOUT_MS / 1000 + 0.3  # refused connections fail at once anyway
    assert is_open(rig.breaker)

    own_redis.start()
    took = await until_allowed(rig, within_s=2)
    assert took < 2
    probe = Redis.from_url(own_redis.url)
    try:
        assert await probe.script_exists(CHECK.sha) == [True]
    finally:
        await probe.aclose()


async def test_script_flush_during_concurrent_checks_causes_no_error(
    own_redis: RedisProcess, own_settings: Settings
) -> None:
    """SCRIPT FLUSH, again and again, while batches of concurrent checks are in flight:
    every check is answered, and exactly the limit is admitted (no check ran twice).
    (The rig's own timeout is generous: this is about NOSCRIPT, not a slow machine.)"""
    rig = Rig(msgspec.structs.replace(own_settings, redis_timeout_ms=5000))
    limit = 500
    inline = Limit(requests=limit, window_ms=DAY_MS)
    flusher = Redis.from_url(own_redis.url)
    outcomes: list[bool] = []
    errors: list[BaseException] = []
    flushes = 0

    async def one() -> None:
        try:
            outcomes.append((await rig.limiter.check("flushed", 1, inline)).allowed)
        except Exception as exc:  # collected, and reported below
            errors.append(exc)

    try:
        async with anyio.create_task_group() as tg:

            async def flush_repeatedly() -> None:
                nonlocal flushes
                while len(outcomes) + len(errors) < 2 * limit:
                    await flusher.script_flush()
                    flushes += 1
                    await anyio.sleep(0.001)

            tg.start_soon(flush_repeatedly)
            for _ in range(20):  # 20 rounds of 50 concurrent checks
                async with anyio.create_task_group() as round_:
                    for _ in range(2 * limit // 20):
                        round_.start_soon(one)
    finally:
        await flusher.aclose()
        await rig.gateway.aclose()
    assert errors == []
    assert flushes >= 5
    assert (outcomes.count(True), outcomes.count(False)) == (limit, limit)
    assert not is_open(rig.breaker)


async def test_a_failing_call_in_a_pipelined_batch_fails_alone_and_is_not_an_outage(
    rig: Rig, own_redis: RedisProcess
) -> None:
    """A key whose state has the wrong type makes its script fail (WRONGTYPE); the other
    checks sharing its round trip succeed, and the breaker does not count it."""
    keys = KeySpace(rig.limiter_prefix)
    client = Redis.from_url(own_redis.url)
    try:
        await client.set(keys.limit("broken"), "not a hash")
    finally:
        await client.aclose()
    results: dict[str, object] = {}

    async def one(key: str) -> None:
        try:
            results[key] = await rig.limiter.check(key)
        except Exception as exc:
            results[key] = exc

    for _ in range(FAILURES + 2):
        async with anyio.create_task_group() as tg:
            for key in ("a", "broken", "b", "c"):
                tg.start_soon(one, key)
        assert all(isinstance(results[k], CheckResult) for k in "abc")
        assert not isinstance(results["broken"], CheckResult | RedisUnavailableError)
        assert "WRONGTYPE" in str(results["broken"])
    assert rig.gateway.writes <= 2 * (FAILURES + 2)  # batches, not one trip per check
    assert not is_open(rig.breaker)
