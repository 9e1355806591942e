"""Two deployments on two databases of one Redis server, with the same KEY_PREFIX: Pub/Sub
ignores database numbers, so each gets channels of its own, and a notification stream of
one never carries the other's changes."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from litestar.testing import AsyncTestClient

from core.keys import KeySpace
from core.settings import load_settings
from throttler.cli import build_app

if TYPE_CHECKING:
    from redis.asyncio import Redis

pytestmark = pytest.mark.anyio

LIMIT = {"requests": 5, "window_ms": 60_000}


def test_each_database_has_its_own_channel() -> None:
    assert KeySpace("p", 0).notify_channel == "p:limits"  # unchanged for database 0
    assert KeySpace("p", 1).notify_channel != KeySpace("p", 0).notify_channel
    assert load_settings({"REDIS_URL": "redis://h:1/3"}, env_file=None).redis_db == 3
    assert load_settings({"REDIS_URL": "unix:///s.sock?db=2"}, env_file=None).redis_db == 2
    assert load_settings({}, env_file=None).redis_db == 0


async def test_a_change_on_database_0_never_reaches_database_1(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    assert redis_url.endswith("/0")
    common = {"KEY_PREFIX": prefix, "APPLY_WAIT_MS": "5000", "WORKER_BLOCK_MS": "100"}
    settings = {
        db: load_settings({**common, "REDIS_URL": f"{redis_url[:-1]}{db}"}, env_file=None)
        for db in (0, 1)
    }
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(KeySpace(prefix, 1).notify_channel)
    try:
        async with (
            AsyncTestClient(app=build_app(settings[0])) as db0,
            AsyncTestClient(app=build_app(settings[1])) as db1,
        ):
            # Answered once applied and announced: the db-0 note has gone out before this.
            assert (await db0.post("/rate-limit/on-db0", json=LIMIT)).status_code == 201
            assert (await db1.post("/rate-limit/on-db1", json=LIMIT)).status_code == 201
            first: Any = None
            for _ in range(100):
                first = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if first is not None:
                    break
        assert first is not None
        assert json.loads(first["data"])["key"] == "on-db1"
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
