"""Both clients (sync and async, one test body each) against a real ``throttler serve``:
typed decisions with the headers to forward, limit changes, batches, typed errors, tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.e2e.client.conftest import DAY_MS, either_client, own_service, service_env
from throttler_client import (
    Decision,
    InvalidKeyError,
    Limit,
    LimitChange,
    NotFoundError,
    Policy,
    PolicyChange,
    ThrottlerError,
    UnauthorizedError,
    ValidationError,
)

if TYPE_CHECKING:
    from pathlib import Path

    from throttler_client import AsyncThrottlerClient

pytestmark = pytest.mark.anyio


async def test_limits_checks_and_the_headers_to_forward(
    throttler: AsyncThrottlerClient, prefix: str
) -> None:
    key = f"{prefix}:api"
    limit = Limit(requests=3, window_ms=DAY_MS)
    created = await throttler.set_limit(key, limit)
    stored = Limit(3, DAY_MS, "token_bucket", burst=3)
    assert created == LimitChange("created", stored, limits=(stored,))
    replaced = await throttler.set_limit(key, limit)
    assert replaced.status == "replaced"

    first = await throttler.check(key)
    assert (first.key, first.allowed, first.remaining, first.limit) == (key, True, 2, 3)
    assert (first.enforced, first.cached, first.retry_after_ms) == (True, False, 0)
    assert first.headers["x-ratelimit-limit"] == "3"
    assert first.headers["x-ratelimit-remaining"] == "2"
    assert first.headers["ratelimit-policy"] == '"token_bucket";q=3;w=86400'
    assert "retry-after" not in first.headers

    peeked = await throttler.peek(key)
    assert (peeked.allowed, peeked.remaining) == (True, 2)  # a peek spends nothing
    assert (await throttler.check(key, 2)).remaining == 0

    denied = await throttler.check(key)
    assert (denied.allowed, denied.remaining, denied.limit) == (False, 0, 3)
    assert 0 < denied.retry_after_ms <= DAY_MS // 3
    assert int(denied.headers["retry-after"]) == -(-denied.retry_after_ms // 1000)
    assert denied.headers["x-ratelimit-remaining"] == "0"

    deleted = await throttler.delete_limit(key)
    assert deleted == LimitChange("deleted", stored, limits=(stored,))
    with pytest.raises(NotFoundError) as missing:
        await throttler.delete_limit(key)
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    # deleting the limit forgot the cached denial: the default limit answers now
    assert (await throttler.check(key)).allowed


async def test_check_many_independent_and_all_or_nothing(
    throttler: AsyncThrottlerClient, prefix: str
) -> None:
    small, big = f"{prefix}:small", f"{prefix}:big"
    await throttler.set_limit(small, Limit(2, DAY_MS, "gcra"))
    await throttler.set_limit(big, Limit(5, DAY_MS))

    assert (await throttler.check(small, 2)).remaining == 0
    atomic = await throttler.check_many([(big, 2), (small, 1)], all_or_nothing=True)
    assert not atomic.allowed
    held_back, denied = atomic.results
    assert (held_back.key, held_back.allowed, held_back.retry_after_ms) == (big, False, 0)
    assert (denied.key, denied.allowed, denied.error) == (small, False, None)
    assert denied.retry_after_ms > 0
    assert (await throttler.peek(big)).remaining == 5  # nothing was spent

    batch = await throttler.check_many([big, (small, 3), (big, 0)])
    assert (batch.allowed, batch.enforced) == (False, True)
    first, refused, peek = batch.results
    assert (first.key, first.allowed, first.remaining) == (big, True, 4)
    assert (refused.key, refused.allowed, refused.error) == (small, False, "validation_error")
    assert refused.message is not None
    assert "exceeds the limit's capacity" in refused.message
    assert (peek.allowed, peek.remaining) == (True, 4)


async def test_typed_errors(throttler: AsyncThrottlerClient, prefix: str) -> None:
    with pytest.raises(InvalidKeyError) as bad_key:
        await throttler.check("bad key")
    assert (bad_key.value.status, bad_key.value.code) == (400, "invalid_key")
    with pytest.raises(InvalidKeyError):
        await throttler.set_limit("{brace}", Limit(1, 1000))

    key = f"{prefix}:errors"
    await throttler.set_limit(key, Limit(2, DAY_MS))
    with pytest.raises(ValidationError, match="exceeds the limit's capacity"):
        await throttler.check(key, 3)
    with pytest.raises(ValidationError, match="requests"):
        await throttler.set_limit(key, Limit(0, DAY_MS))
    with pytest.raises(ValidationError, match="burst applies to token_bucket and gcra"):
        await throttler.set_limit(key, Limit(5, DAY_MS, "fixed_window", burst=5))
    assert isinstance(ValidationError("x"), ThrottlerError)


async def test_reset_clears_usage_and_keeps_the_limit(
    throttler: AsyncThrottlerClient, prefix: str
) -> None:
    """Issue 10's contract: ``POST /rate-limit/{key}/reset`` → 200 ``{"key", "reset": true}``,
    usage cleared, the limit kept."""
    key = f"{prefix}:reset"
    await throttler.set_limit(key, Limit(2, DAY_MS))
    await throttler.check(key, 2)
    denied = await throttler.check(key)
    assert not denied.allowed
    await throttler.reset(key)
    after = await throttler.check(key)
    assert (after.allowed, after.cached, after.remaining, after.limit) == (True, False, 1, 2)


async def test_several_limits_and_policies(throttler: AsyncThrottlerClient, prefix: str) -> None:
    """Issue 10 through the client: a key's several limits, and a policy's whole life."""
    key = f"{prefix}:two"
    burst = Limit(2, 1_000, "fixed_window")
    quota = Limit(3, 31 * DAY_MS, "fixed_window", calendar="month")
    created = await throttler.set_limits(key, [burst, quota])
    assert created == LimitChange("created", burst, limits=(burst, quota))
    assert [(await throttler.check(key)).allowed for _ in range(3)] == [True, True, False]

    policy = Policy(f"{prefix}-free", (Limit(1, DAY_MS, "fixed_window"),), (f"{prefix}:free:*",))
    assert await throttler.put_policy(policy) == PolicyChange("created", policy)
    assert await throttler.get_policy(policy.name) == policy
    assert policy in await throttler.list_policies()
    shadowed = Policy(policy.name, policy.limits, policy.match, shadow=True)
    assert (await throttler.put_policy(shadowed)).status == "replaced"
    assert await throttler.delete_policy(policy.name) == PolicyChange("deleted", shadowed)
    with pytest.raises(NotFoundError):
        await throttler.get_policy(policy.name)


async def test_check_and_admin_tokens(
    flavour: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    env = service_env(redis_url, CHECK_TOKEN="check-secret", ADMIN_TOKEN="admin-secret")
    key = f"{prefix}:tokens"
    with own_service(env, tmp_path) as service:
        async with either_client(flavour, service.base_url, timeout=10) as anonymous:
            with pytest.raises(UnauthorizedError) as refused:
                await anonymous.check(key)
            assert (refused.value.status, refused.value.code) == (401, "unauthorized")
        async with either_client(
            flavour, service.base_url, token="check-secret", timeout=10
        ) as checker:
            decision: Decision = await checker.check(key)
            assert decision.allowed
            with pytest.raises(UnauthorizedError):  # the check token opens no admin route
                await checker.set_limit(key, Limit(1, DAY_MS))
        async with either_client(
            flavour, service.base_url, token="check-secret", admin_token="admin-secret", timeout=10
        ) as both:
            assert (await both.set_limit(key, Limit(1, DAY_MS))).status == "created"
            assert (await both.check(key)).remaining == 0
