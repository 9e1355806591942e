"""Shared fixtures: one real Redis per session, a unique key prefix per test."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from core.gateway import Gateway
from core.keys import KeySpace
from core.settings import Settings, load_settings
from tests.support.servers import RedisProcess, session_redis_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from litestar.testing import AsyncTestClient


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with session_redis_url() as url:
        yield url


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A Redis of the test's own, to stop, pause (SIGSTOP) or restart; killed at the end
    (SIGKILL ends a paused process too)."""
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses: tests isolate by prefix, never by FLUSHALL."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(redis_url: str, prefix: str) -> Settings:
    return load_settings(
        {
            "REDIS_URL": redis_url,
            "KEY_PREFIX": prefix,
            "APPLY_WAIT_MS": "5000",
            "INLINE_LIMITS": "true",  # tests of inline limits; the default (off) has its own
            # A shared CI machine can stall a connect for more than the default 500 ms;
            # tests of timeouts set their own.
            "REDIS_TIMEOUT_MS": "5000",
            # Envoy's RLS listens on a fixed port by default: tests of it choose free ports.
            "RLS_BIND_ADDRESS": "off",
        },
        env_file=None,
    )


@pytest.fixture
def keys(prefix: str) -> KeySpace:
    return KeySpace(prefix)


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    """The service's own door to the session's Redis (pipelined script calls and all)."""
    door = Gateway(settings)
    yield door
    await door.aclose()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The API in-process (lifespan and all) on the session's Redis."""
    from litestar.testing import AsyncTestClient

    from throttler.cli import build_app

    async with AsyncTestClient(app=build_app(settings)) as test_client:
        yield test_client
