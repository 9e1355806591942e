"""POST /check follows FAILURE_POLICY when Redis cannot answer, as single checks do."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from litestar.testing import AsyncTestClient

from core.settings import load_settings
from throttler.cli import build_app

if TYPE_CHECKING:
    from tests.support.servers import RedisProcess

pytestmark = pytest.mark.anyio

BODY = {"checks": [{"key": "a"}, {"key": "b", "tokens": 2}]}


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_batch_follows_the_failure_policy(
    own_redis: RedisProcess, prefix: str, policy: str
) -> None:
    settings = load_settings(
        {
            "REDIS_URL": own_redis.url,
            "KEY_PREFIX": prefix,
            "FAILURE_POLICY": policy,
            "REDIS_TIMEOUT_MS": "200",
            "WORKER_BLOCK_MS": "50",
        },
        env_file=None,
    )
    async with AsyncTestClient(app=build_app(settings, worker=False)) as client:
        up = await client.post("/check", json=BODY)
        assert up.status_code == 200
        assert "x-ratelimit-enforced" not in up.headers
        own_redis.stop()
        down = await client.post("/check", json=BODY)
        if policy == "open":
            assert down.status_code == 200
            assert down.headers["x-ratelimit-enforced"] == "false"
            assert down.json()["allowed"] is True
            assert [r["allowed"] for r in down.json()["results"]] == [True, True]
        else:
            assert down.status_code == 503
            assert down.json()["error"] == "redis_unavailable"
        metrics = (await client.get("/metrics")).text
        assert f'throttler_degraded_decisions_total{{policy="{policy}"}} 2.0' in metrics
