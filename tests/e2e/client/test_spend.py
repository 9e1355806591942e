"""The client's spend calls against a real ``throttler serve``: ``acquire()`` as a context
manager (sync and async) that releases on exit, even when the block raises; ``release``;
``refund``; ``check(..., max_wait_ms=...)`` sleeping the reservation's wait."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

from tests.e2e.client.conftest import DAY_MS
from throttler_client import (
    AsyncThrottlerClient,
    Lease,
    Limit,
    NoConcurrencyLimitError,
    ThrottlerClient,
)

if TYPE_CHECKING:
    from tests.support.service import ServiceProcess

pytestmark = pytest.mark.anyio

ONE = Limit(requests=1, window_ms=DAY_MS, algorithm="concurrency")


def fresh(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def use_and_fail(throttler: AsyncThrottlerClient, key: str) -> None:
    async with throttler.acquire(key) as lease:
        assert lease.allowed  # the first was released when its block ended
        raise RuntimeError("boom")


async def test_async_acquire_releases_on_exit(service: ServiceProcess) -> None:
    key = fresh("lease-async")
    async with AsyncThrottlerClient(service.base_url, timeout=10) as throttler:
        await throttler.set_limit(key, ONE)
        async with throttler.acquire(key) as lease:
            assert isinstance(lease, Lease)
            assert (lease.allowed, lease.expires_in_ms, lease.remaining) == (True, DAY_MS, 0)
            assert lease.headers["x-ratelimit-limit"] == "1"
            async with throttler.acquire(key) as second:
                assert not second.allowed
                assert second.id == ""
                assert second.retry_after_ms > DAY_MS - 60_000
        with pytest.raises(RuntimeError, match="boom"):
            await use_and_fail(throttler, key)
        async with throttler.acquire(key) as lease:
            assert lease.allowed  # ...and this one when its block raised
            assert await throttler.release(key, lease.id)
            assert not await throttler.release(key, lease.id)
        with pytest.raises(NoConcurrencyLimitError):
            async with throttler.acquire(fresh("plain")):
                pass


def test_sync_acquire_releases_on_exit(service: ServiceProcess) -> None:
    key = fresh("lease-sync")
    with ThrottlerClient(service.base_url, timeout=10) as throttler:
        throttler.set_limit(key, ONE)
        with throttler.acquire(key, ttl_ms=60_000) as lease:
            assert (lease.allowed, lease.expires_in_ms) == (True, 60_000)
            with throttler.acquire(key) as second:
                assert not second.allowed
        with throttler.acquire(key) as lease:
            assert lease.allowed


async def test_refund(service: ServiceProcess) -> None:
    key = fresh("refund")
    async with AsyncThrottlerClient(service.base_url, timeout=10) as throttler:
        await throttler.set_limit(key, Limit(requests=10, window_ms=DAY_MS))
        assert (await throttler.check(key, 10)).remaining == 0
        assert not (await throttler.check(key)).allowed  # remembered by the denial cache
        left = await throttler.refund(key, 4)
        assert (left.remaining, left.limit) == (4, 10)
        assert (await throttler.check(key, 4)).allowed  # the refund cleared the cache entry
        assert (await throttler.refund(key, 100)).remaining == 10


async def test_check_sleeps_a_reserved_wait(service: ServiceProcess) -> None:
    """10 per second, burst 1: the second check is reserved 100 ms out and answers after."""
    key = fresh("wait")
    async with AsyncThrottlerClient(service.base_url, timeout=10) as throttler:
        await throttler.set_limit(key, Limit(requests=10, window_ms=1_000, burst=1))
        first = await throttler.check(key, max_wait_ms=5_000)
        assert (first.allowed, first.wait_ms) == (True, 0)
        started = time.monotonic()
        second = await throttler.check(key, max_wait_ms=5_000)
        slept = time.monotonic() - started
        assert second.allowed
        assert 0 < second.wait_ms <= 100
        assert slept >= second.wait_ms / 1000  # it waited at least what it was told
        daily = fresh("wait-daily")
        await throttler.set_limit(daily, Limit(requests=1, window_ms=DAY_MS, burst=1))
        assert (await throttler.check(daily, max_wait_ms=5_000)).allowed
        denied = await throttler.check(daily, max_wait_ms=5_000)  # a day away: no reservation
        assert not denied.allowed
        assert denied.retry_after_ms > DAY_MS - 60_000


def test_sync_check_sleeps_a_reserved_wait(service: ServiceProcess) -> None:
    key = fresh("wait-sync")
    with ThrottlerClient(service.base_url, timeout=10) as throttler:
        throttler.set_limit(key, Limit(requests=1, window_ms=200, burst=1))
        assert throttler.check(key, max_wait_ms=1_000).allowed
        started = time.monotonic()
        second = throttler.check(key, max_wait_ms=1_000)
        assert second.allowed
        assert 0 < second.wait_ms <= 200
        assert time.monotonic() - started >= second.wait_ms / 1000


async def test_concurrent_async_acquires_hold_at_most_the_slots(service: ServiceProcess) -> None:
    """8 workers, 3 slots: a holder keeps its lease until 3 are held at once (or a second
    passed), so the most held at once is exactly 3; every worker gets a lease in the end."""
    key = fresh("lease-many")
    held, most, done = 0, 0, 0
    full = anyio.Event()
    async with AsyncThrottlerClient(service.base_url, timeout=10) as throttler:
        limit = Limit(requests=3, window_ms=DAY_MS, algorithm="concurrency")
        await throttler.set_limit(key, limit)

        async def worker() -> None:
            nonlocal held, most, done
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                async with throttler.acquire(key) as lease:
                    if not lease.allowed:
                        await anyio.sleep(0.005)
                        continue
                    held += 1
                    most = max(most, held)
                    if most == 3:
                        full.set()
                    with anyio.move_on_after(1):
                        await full.wait()
                    held -= 1
                    done += 1
                    return
            raise AssertionError("no lease within 60 s")

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(worker)
    assert (most, done) == (3, 8)
