"""With Redis unreachable, the notification hub and a worker each log the outage once (not
every half second) and back off; each says once when Redis answers again. Checks failed by
an outage are logged once, not once each."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import pytest
from litestar.testing import AsyncTestClient

from core.gateway import Gateway
from core.keys import KeySpace
from core.notifications import NotificationHub
from core.settings import load_settings
from tests.support.poll import until
from throttler.cli import build_app
from workers.runner import Worker

if TYPE_CHECKING:
    from tests.support.servers import RedisProcess

pytestmark = pytest.mark.anyio

FAILURES = 3  # 0.5 + 1 s of backoff: the old code would have logged 3 warnings by then


def _lines(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> int:
    return sum(1 for r in caplog.records if r.name == logger and text in r.getMessage())


async def test_the_hub_and_a_worker_log_an_outage_once_each(
    own_redis: RedisProcess, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    own_redis.stop()  # down from the start
    env = {"REDIS_URL": own_redis.url, "KEY_PREFIX": prefix, "WORKER_BLOCK_MS": "100"}
    settings = load_settings(env, env_file=None)
    gateway = Gateway(settings)
    hub = NotificationHub(gateway, KeySpace(prefix).notify_channel)
    worker = Worker(gateway, KeySpace(prefix), settings, "outage")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            tg.start_soon(worker.run)

            async def retried_enough() -> bool:
                return hub.outage.failures >= FAILURES and worker.outage.failures >= FAILURES

            await until(retried_enough, seconds=30)
            assert _lines(caplog, "throttler.notifications", "redis unavailable") == 1
            assert _lines(caplog, "throttler.worker", "redis unavailable") == 1

            own_redis.start()

            async def recovered() -> bool:
                return hub.subscribed.is_set() and not worker.outage.down

            await until(recovered, seconds=30)
            assert _lines(caplog, "throttler.notifications", "redis answers again") == 1
            assert _lines(caplog, "throttler.worker", "redis answers again") == 1
            worker.stop()
            tg.cancel_scope.cancel()
    finally:
        await gateway.aclose()


@pytest.mark.parametrize(("policy", "status"), [("closed", 503), ("open", 200)])
async def test_checks_failed_by_an_outage_log_it_once(
    own_redis: RedisProcess,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
    policy: str,
    status: int,
) -> None:
    """Every check an outage fails is counted in /metrics; the log gets one line for them
    (at most one every UNAVAILABLE_LOG_S), not one per check."""
    caplog.set_level(logging.INFO)
    own_redis.stop()
    env = {"REDIS_URL": own_redis.url, "KEY_PREFIX": prefix, "FAILURE_POLICY": policy}
    app = build_app(load_settings(env, env_file=None), worker=False)
    async with AsyncTestClient(app=app) as client:
        for _ in range(20):
            assert (await client.post("/rate-limit/k/check")).status_code == status
        batch = await client.post("/check", json={"checks": [{"key": "a"}, {"key": "b"}]})
        assert batch.status_code == status
    assert _lines(caplog, "throttler.api", "redis unavailable") == 1
