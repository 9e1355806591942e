"""Inline limits (a check that carries ``requests``/``window_ms``): off by default; when on,
they expire unused and never override what the config path set (a key's own limit or a
policy that covers the key)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from litestar.testing import AsyncTestClient

from core.keys import KeySpace
from core.settings import load_settings
from tests.support.poll import until
from throttler.cli import build_app

if TYPE_CHECKING:
    from litestar import Litestar
    from redis.asyncio import Redis

    from core.settings import Settings

    Client = AsyncTestClient[Litestar]

pytestmark = pytest.mark.anyio

INLINE = {"requests": 1, "window_ms": 31 * 86_400_000}  # "1 per 31 days": a pinned key


async def test_off_by_default_a_check_with_a_limit_is_refused_and_stores_nothing(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    settings = load_settings({"REDIS_URL": redis_url, "KEY_PREFIX": prefix}, env_file=None)
    assert settings.inline_limits is False
    async with AsyncTestClient(app=build_app(settings, worker=False)) as client:
        resp = await client.post("/rate-limit/victim/check", json=INLINE)
        assert resp.status_code == 400, resp.text
        assert "INLINE_LIMITS" in resp.json()["message"]
        # A plain check of the same key still gets the default limit (100), not 1.
        plain = await client.post("/rate-limit/victim/check")
        assert plain.json()["limit"] == 100
    hash_key = KeySpace(prefix).script_keys("victim")[0]
    assert await redis.hget(hash_key, "c") is None


async def test_an_inline_limit_expires(client: Client, redis: Redis, settings: Settings) -> None:
    resp = await client.post("/rate-limit/temp/check", json={"requests": 5, "window_ms": 60_000})
    assert resp.json()["limit"] == 5
    hash_key = KeySpace(settings.key_prefix).script_keys("temp")[0]
    ttl = await redis.pttl(hash_key)
    assert 0 < ttl <= settings.inline_limit_ttl_ms


async def test_a_configured_limit_replaces_an_inline_one_and_never_expires(
    client: Client, redis: Redis, settings: Settings
) -> None:
    await client.post("/rate-limit/k/check", json=INLINE)
    resp = await client.post("/rate-limit/k", json={"requests": 50, "window_ms": 60_000})
    assert resp.status_code in (200, 201), resp.text
    hash_key = KeySpace(settings.key_prefix).script_keys("k")[0]
    assert await redis.pttl(hash_key) == -1  # no TTL: configuration stays
    again = await client.post("/rate-limit/k/check", json=INLINE)
    assert again.json()["limit"] == 50


async def test_an_inline_limit_never_overrides_a_policy(
    client: Client, redis: Redis, settings: Settings
) -> None:
    policy: dict[str, Any] = {
        "limits": [{"requests": 40, "window_ms": 60_000}],
        "match": ["tenant:*"],
    }
    resp = await client.put("/policies/tenants", json=policy)
    assert resp.status_code == 201, resp.text

    async def known() -> bool:  # the API process learns of the policy by its notification
        plain = await client.post("/rate-limit/tenant:other/check", json={"tokens": 0})
        return bool(plain.json().get("policy") == "tenants")

    await until(known)
    pinned = await client.post("/rate-limit/tenant:a/check", json=INLINE)
    assert pinned.status_code == 200, pinned.text
    assert (pinned.json()["limit"], pinned.json()["policy"]) == (40, "tenants")
    hash_key = KeySpace(settings.key_prefix).script_keys("tenant:a")[0]
    assert await redis.hget(hash_key, "c") is None  # nothing stored as the key's own
    second = await client.post("/rate-limit/tenant:a/check", json=INLINE)
    assert second.status_code == 200  # 1 per 31 days would have denied this one
