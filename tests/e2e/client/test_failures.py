"""Both clients when the service cannot answer: the failure policy with the service stopped,
the timeout with the service paused (SIGSTOP), the denial cache answering in its place, and
retries only where they are safe (counted by the service's own metrics)."""

from __future__ import annotations

import re
import signal
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.e2e.client.conftest import DAY_MS, either_client, own_service, service_env
from tests.support.poll import until
from throttler_client import (
    Decision,
    Limit,
    ThrottlerTimeoutError,
    ThrottlerUnavailableError,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.support.servers import RedisProcess
    from tests.support.service import ServiceProcess

pytestmark = pytest.mark.anyio

TIMEOUT_S = 0.5
#: How much later than its timeout a call may end: scheduling on a busy 2-core machine.
SLACK_S = 1.5
#: Timers may fire this much early (asyncio runs callbacks within its clock resolution).
EARLY_S = 0.05


@pytest.fixture
def pausable(service: ServiceProcess) -> Iterator[ServiceProcess]:
    """The module's service, which a test may pause (SIGSTOP); resumed after each test."""
    try:
        yield service
    finally:
        service.signal(signal.SIGCONT)


async def test_fail_open_and_closed_with_the_service_stopped(
    flavour: str, own: ServiceProcess, prefix: str
) -> None:
    key = f"{prefix}:stopped"
    async with (
        either_client(flavour, own.base_url, failure_policy="open") as open_client,
        either_client(flavour, own.base_url) as closed_client,
    ):
        assert (await open_client.check(key)).enforced
        assert (await closed_client.check(key)).enforced
        assert own.stop() == 0

        decision = await open_client.check(key)
        assert decision == Decision.unenforced(key)
        assert (decision.allowed, decision.enforced) == (True, False)
        assert decision.headers == {"x-ratelimit-enforced": "false"}
        assert (await open_client.peek(key)).enforced is False
        many = await open_client.check_many([key, (f"{prefix}:other", 2)])
        assert (many.allowed, many.enforced) == (True, False)
        assert [(r.key, r.allowed, r.enforced) for r in many.results] == [
            (key, True, False),
            (f"{prefix}:other", True, False),
        ]

        with pytest.raises(ThrottlerUnavailableError) as refused:
            await closed_client.check(key)
        assert (refused.value.code, refused.value.status) == ("unreachable", None)
        # the failure policy is about checks: a limit change is never pretended
        with pytest.raises(ThrottlerUnavailableError):
            await open_client.set_limit(key, Limit(1, DAY_MS))


async def test_timeouts_are_honoured(flavour: str, pausable: ServiceProcess, prefix: str) -> None:
    """A paused service accepts connections (the kernel does) and never answers."""
    key = f"{prefix}:paused"
    async with (
        either_client(flavour, pausable.base_url, timeout=TIMEOUT_S) as closed_client,
        either_client(
            flavour, pausable.base_url, timeout=TIMEOUT_S, failure_policy="open"
        ) as open_client,
    ):
        assert (await closed_client.check(key)).allowed  # connections are open now
        pausable.signal(signal.SIGSTOP)

        began = time.monotonic()
        with pytest.raises(ThrottlerTimeoutError):
            await closed_client.check(key)
        took = time.monotonic() - began
        assert TIMEOUT_S - EARLY_S <= took < TIMEOUT_S + SLACK_S, took

        began = time.monotonic()
        assert await open_client.check(key) == Decision.unenforced(key)
        assert TIMEOUT_S - EARLY_S <= time.monotonic() - began < TIMEOUT_S + SLACK_S

        # retried (setting a limit is safe to repeat), yet within the same deadline
        began = time.monotonic()
        with pytest.raises(ThrottlerTimeoutError):
            await closed_client.set_limit(key, Limit(5, DAY_MS))
        assert time.monotonic() - began < TIMEOUT_S + SLACK_S


async def test_the_denial_cache_answers_without_asking(
    flavour: str, pausable: ServiceProcess, prefix: str
) -> None:
    """Once denied, checks of as many tokens are answered locally until the retry time: the
    service is paused meanwhile, so any request would get no answer."""
    key = f"{prefix}:cached"
    async with either_client(flavour, pausable.base_url, timeout=10) as throttler:
        await throttler.set_limit(key, Limit(3, DAY_MS))
        assert (await throttler.check(key)).remaining == 2
        denied = await throttler.check(key, 3)
        assert (denied.allowed, denied.cached) == (False, False)
        assert throttler.denial_cache.saved == 0

        pausable.signal(signal.SIGSTOP)
        try:
            for _ in range(20):
                local = await throttler.check(key, 3)
                assert (local.allowed, local.cached, local.enforced) == (False, True, True)
                assert 0 < local.retry_after_ms <= denied.retry_after_ms
                assert (local.limit, local.remaining) == (denied.limit, denied.remaining)
                assert int(local.headers["retry-after"]) == -(-local.retry_after_ms // 1000)
                assert re.search(r";t=\d+$", local.headers["ratelimit"])
        finally:
            pausable.signal(signal.SIGCONT)
        assert throttler.denial_cache.saved == 20

        # fewer tokens than the denied check might pass: the service is asked
        fewer = await throttler.check(key, 2)
        assert (fewer.allowed, fewer.cached, fewer.remaining) == (True, False, 0)
        assert (await throttler.check(key, 3)).cached  # the denial still holds
        # this client's own limit change forgets the denial
        await throttler.set_limit(key, Limit(10, DAY_MS))
        after = await throttler.check(key, 3)
        assert (after.allowed, after.cached, after.remaining) == (True, False, 10 - 3 - 3)
        assert throttler.denial_cache.saved == 21


async def test_the_denial_cache_never_outlives_the_retry_time(
    flavour: str, pausable: ServiceProcess, prefix: str
) -> None:
    key = f"{prefix}:expiring"
    async with either_client(flavour, pausable.base_url, timeout=5) as throttler:
        await throttler.set_limit(key, Limit(1, 1000))  # one request a second
        assert (await throttler.check(key)).allowed
        denied = await throttler.check(key)
        assert not denied.allowed
        assert 0 < denied.retry_after_ms <= 1000
        seen: list[Decision] = []

        async def allowed_again() -> bool:
            seen.append(await throttler.check(key))
            return seen[-1].allowed

        await until(allowed_again, seconds=5, interval=0.02)
        assert any(d.cached for d in seen), "no check was answered from the cache"
        assert not seen[-1].cached


def degraded_checks(service: ServiceProcess) -> float:
    """Checks the service could not decide, from its own /metrics."""
    text = httpx.get(f"{service.base_url}/metrics", timeout=5).text
    pattern = r'^throttler_checks_total\{algorithm="unknown",decision="degraded_denied"\} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_retries_only_where_safe(
    flavour: str, own_redis: RedisProcess, prefix: str, tmp_path: Path
) -> None:
    """With the service's Redis gone every check answers 503: a check may have run before its
    Redis call timed out, so it is sent once; a peek spends nothing, so it is retried."""
    key = f"{prefix}:retries"
    with own_service(service_env(own_redis.url), tmp_path) as service:
        async with either_client(flavour, service.base_url, timeout=10, retries=2) as throttler:
            assert (await throttler.check(key)).allowed
            own_redis.stop()

            with pytest.raises(ThrottlerUnavailableError) as refused:
                await throttler.check(key)
            assert (refused.value.status, refused.value.code) == (503, "redis_unavailable")
            assert degraded_checks(service) == 1

            with pytest.raises(ThrottlerUnavailableError):
                await throttler.peek(key)
            assert degraded_checks(service) == 1 + 3  # the first attempt and two retries
