"""The spend routes through the whole app in-process on a real Redis: acquire and release
(409 without a concurrency limit, 404 for a lease the key does not hold), refunds, reserved
waits on a check, and the OpenAPI document describing them."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
from litestar.testing import AsyncTestClient

from core.settings import Settings, load_settings
from throttler.cli import build_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from litestar import Litestar

    from tests.support.servers import RedisProcess

    Client = AsyncTestClient[Litestar]

pytestmark = pytest.mark.anyio

HOUR = 3_600_000


def _settings(redis_url: str, prefix: str) -> Settings:
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "APPLY_WAIT_MS": "5000"}
    return load_settings({**env, "WORKER_BLOCK_MS": "50"}, env_file=None)


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=build_app(settings, worker=True)) as client:
        yield client


@pytest.fixture
async def client(redis_url: str, prefix: str) -> AsyncIterator[Client]:
    async with app_client(_settings(redis_url, prefix)) as test_client:
        yield test_client


async def set_limits(client: Client, key: str, *limits: dict[str, Any]) -> None:
    body = limits[0] if len(limits) == 1 else {"limits": list(limits)}
    resp = await client.post(f"/rate-limit/{key}", json=body)
    assert resp.status_code == 201, resp.text


async def test_acquire_and_release(client: Client) -> None:
    await set_limits(
        client,
        "api:a",
        {"requests": 100, "window_ms": HOUR},
        {"requests": 2, "window_ms": 30_000, "algorithm": "concurrency"},
    )
    first = await client.post("/rate-limit/api:a/acquire")
    assert first.status_code == 200, first.text
    body = first.json()
    assert set(body) == {"allowed", "lease", "expires_in_ms", "remaining", "limit"}
    assert (body["allowed"], body["expires_in_ms"], body["remaining"], body["limit"]) == (
        True,
        30_000,
        1,
        2,
    )
    assert first.headers["ratelimit"].startswith('"1-concurrency";r=1;')
    second = await client.post("/rate-limit/api:a/acquire", json={"ttl_ms": 5_000})
    assert second.json()["expires_in_ms"] == 5_000
    third = await client.post("/rate-limit/api:a/acquire")
    assert third.status_code == 429
    denied = third.json()
    assert denied["error"] == "rate_limit_exceeded"
    assert 0 < denied["retry_after_ms"] <= 5_000  # the earliest lease to end: the 5 s one
    assert int(third.headers["retry-after"]) >= 1
    # The rate limit spent one token per lease taken, none for the denial.
    usage = (await client.get("/rate-limit/api:a")).json()["limits"]
    assert [u["remaining"] for u in usage] == [98, 0]
    # Release: 200 once, then 404; the slot is free again.
    lease = body["lease"]
    released = await client.post("/rate-limit/api:a/release", json={"lease": lease})
    assert released.status_code == 200
    assert released.json() == {"key": "api:a", "released": True}
    again = await client.post("/rate-limit/api:a/release", json={"lease": lease})
    assert again.status_code == 404
    assert again.json()["error"] == "not_found"
    assert (await client.post("/rate-limit/api:a/acquire")).status_code == 200
    # A lease of another key is unknown here.
    other = await client.post("/rate-limit/api:b/release", json={"lease": second.json()["lease"]})
    assert other.status_code == 404


async def test_acquire_needs_a_concurrency_limit(client: Client) -> None:
    resp = await client.post("/rate-limit/plain/acquire")
    assert resp.status_code == 409
    assert resp.json()["error"] == "no_concurrency_limit"
    assert (await client.post("/rate-limit/plain/release", json={"lease": "x"})).status_code == 404


async def test_a_check_never_takes_a_lease(client: Client) -> None:
    await set_limits(
        client, "c:only", {"requests": 1, "window_ms": HOUR, "algorithm": "concurrency"}
    )
    assert (await client.post("/rate-limit/c:only/acquire")).status_code == 200
    checks = [await client.post("/rate-limit/c:only/check") for _ in range(3)]
    assert [c.status_code for c in checks] == [200] * 3
    assert checks[0].json()["remaining"] == 0  # the free slots
    assert (await client.post("/rate-limit/c:only/acquire")).status_code == 429


async def test_policy_concurrency_limit(client: Client) -> None:
    resp = await client.put(
        "/policies/conc",
        json={
            "limits": [{"requests": 1, "window_ms": HOUR, "algorithm": "concurrency"}],
            "match": ["w:*"],
        },
    )
    assert resp.status_code == 201, resp.text
    got = await client.post("/rate-limit/w:1/acquire")
    assert (got.status_code, got.json()["policy"]) == (200, "conc")
    assert (await client.post("/rate-limit/w:1/acquire")).status_code == 429
    assert (await client.post("/rate-limit/w:2/acquire")).status_code == 200  # per key


@pytest.mark.parametrize("algorithm", ["token_bucket", "gcra", "sliding_window", "fixed_window"])
async def test_refund_never_exceeds_capacity(client: Client, algorithm: str) -> None:
    key = f"r:{algorithm}"
    await set_limits(client, key, {"requests": 10, "window_ms": HOUR, "algorithm": algorithm})
    spent = await client.post(f"/rate-limit/{key}/check", json={"tokens": 8})
    assert spent.json()["remaining"] == 2
    back = await client.post(f"/rate-limit/{key}/refund", json={"tokens": 5})
    assert back.status_code == 200, back.text
    assert (back.json()["remaining"], back.json()["limit"]) == (7, 10)
    assert back.headers["x-ratelimit-remaining"] == "7"
    over = await client.post(f"/rate-limit/{key}/refund", json={"tokens": 1_000})
    assert over.json()["remaining"] == 10
    assert (await client.post(f"/rate-limit/{key}/check", json={"tokens": 10})).status_code == 200
    assert (await client.post(f"/rate-limit/{key}/check")).status_code == 429


async def test_reserved_wait(client: Client) -> None:
    # 1 per hour, burst 1: the second check would wait an hour.
    await set_limits(client, "q:1", {"requests": 1, "window_ms": HOUR, "burst": 1})
    first = await client.post("/rate-limit/q:1/check", json={"max_wait_ms": 2 * HOUR})
    assert (first.status_code, first.json()["wait_ms"]) == (200, 0)
    second = await client.post("/rate-limit/q:1/check", json={"max_wait_ms": 2 * HOUR})
    assert second.status_code == 200
    assert HOUR - 60_000 < second.json()["wait_ms"] <= HOUR
    # Two hours are taken; a third within 90 minutes cannot be reserved: as without a wait.
    third = await client.post("/rate-limit/q:1/check", json={"max_wait_ms": 90 * 60_000})
    assert third.status_code == 429
    assert 2 * HOUR - 60_000 < third.json()["retry_after_ms"] <= 2 * HOUR
    plain = await client.post("/rate-limit/q:1/check")
    assert "wait_ms" not in plain.json()


async def test_the_document_describes_the_spend_routes(client: Client) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    paths = doc["paths"]
    for route in ("acquire", "release", "refund"):
        assert "post" in paths[f"/rate-limit/{{key}}/{route}"]
    assert {"404"} <= set(paths["/rate-limit/{key}/release"]["post"]["responses"])
    assert {"409", "429"} <= set(paths["/rate-limit/{key}/acquire"]["post"]["responses"])
    schemas = doc["components"]["schemas"]
    assert schemas["RefundRequest"]["additionalProperties"] is False
    assert schemas["CheckRequest"]["properties"]["max_wait_ms"]["minimum"] == 0


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_spend_routes_when_redis_cannot_answer(
    own_redis: RedisProcess, prefix: str, policy: str
) -> None:
    """Acquire follows FAILURE_POLICY as a check does; release and refund are a 503."""
    env = {"REDIS_URL": own_redis.url, "KEY_PREFIX": prefix, "FAILURE_POLICY": policy}
    settings = load_settings({**env, "REDIS_TIMEOUT_MS": "200"}, env_file=None)
    async with AsyncTestClient(app=build_app(settings, worker=False)) as client:
        own_redis.stop()
        acquired = await client.post("/rate-limit/down/acquire")
        if policy == "open":
            assert acquired.status_code == 200
            assert acquired.headers["x-ratelimit-enforced"] == "false"
            assert acquired.json() == {
                "allowed": True,
                "lease": "",
                "expires_in_ms": 0,
                "remaining": 0,
                "limit": 0,
                "enforced": False,
            }
        else:
            assert acquired.status_code == 503
            assert acquired.json()["error"] == "redis_unavailable"
        for route, body in (("release", {"lease": "abc"}), ("refund", {"tokens": 1})):
            resp = await client.post(f"/rate-limit/down/{route}", json=body)
            assert resp.status_code == 503, route
            assert resp.headers["retry-after"] == "1"
