"""Throttler's own limits on its callers (api.throttle), decided by its own limiter in Redis:
failed authentication per client address (then every request of that address to a guarded
route is a 429, the right token included), shared by every API process; and config
changes per client address."""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from core.settings import Settings, load_settings
from tests.support.service import ServiceProcess
from throttler.cli import build_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from litestar import Litestar

    Client = AsyncTestClient[Litestar]

ADMIN = f"adm-{uuid.uuid4().hex}"
CHECKER = f"chk-{uuid.uuid4().hex}"
WRONG = f"bad-{uuid.uuid4().hex}"
LIMIT = {"requests": 5, "window_ms": 60_000}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_settings(redis_url: str, prefix: str, **extra: str) -> Settings:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "APPLY_WAIT_MS": "5000",
        "ADMIN_TOKEN": ADMIN,
        "CHECK_TOKEN": CHECKER,
        "AUTH_FAILURES": "3",
        **extra,
    }
    return load_settings(env, env_file=None)


@asynccontextmanager
async def app_client(settings: Settings, *, worker: bool = False) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=build_app(settings, worker=worker)) as client:
        yield client


def assert_throttled(resp: httpx.Response, code: str) -> None:
    assert resp.status_code == 429, resp.text
    assert resp.json()["error"] == code
    assert int(resp.headers["retry-after"]) >= 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/rate-limit/k/check"), ("GET", "/rate-limit/k"), ("GET", "/rate-limit")],
    ids=["check", "admin", "listing"],
)
async def test_wrong_tokens_lock_the_address_out(
    redis_url: str, prefix: str, method: str, path: str
) -> None:
    right = bearer(CHECKER if path.endswith("/check") else ADMIN)
    async with app_client(make_settings(redis_url, prefix)) as client:
        assert (await client.request(method, path, headers=right)).status_code == 200
        for _ in range(3):
            resp = await client.request(method, path, headers=bearer(WRONG))
            assert resp.status_code == 401, resp.text
        assert_throttled(
            await client.request(method, path, headers=bearer(WRONG)), "too_many_auth_failures"
        )
        # Locked out: the right token too, so a guess cannot be told right from wrong.
        assert_throttled(
            await client.request(method, path, headers=right), "too_many_auth_failures"
        )


@pytest.mark.anyio
async def test_a_missing_token_is_not_counted(redis_url: str, prefix: str) -> None:
    async with app_client(make_settings(redis_url, prefix)) as client:
        for _ in range(10):
            assert (await client.post("/rate-limit/k/check")).status_code == 401
        assert (
            await client.post("/rate-limit/k/check", headers=bearer(CHECKER))
        ).status_code == 200


@pytest.mark.anyio
async def test_every_api_process_shares_the_count(redis_url: str, prefix: str) -> None:
    settings = make_settings(redis_url, prefix)
    async with app_client(settings) as first, app_client(settings) as second:
        for _ in range(3):
            assert (await first.get("/rate-limit/k", headers=bearer(WRONG))).status_code == 401
        # The other process has never seen this address fail; its bucket in Redis has.
        assert_throttled(
            await second.get("/rate-limit/k", headers=bearer(WRONG)), "too_many_auth_failures"
        )


@pytest.mark.anyio
async def test_config_changes_are_limited_per_address(redis_url: str, prefix: str) -> None:
    settings = make_settings(redis_url, prefix, MUTATIONS="3", WORKER_BLOCK_MS="100")
    async with app_client(settings, worker=True) as client:
        admin = bearer(ADMIN)
        for i in range(3):
            resp = await client.post(f"/rate-limit/m{i}", json=LIMIT, headers=admin)
            assert resp.status_code == 201, resp.text
        assert_throttled(
            await client.post("/rate-limit/m9", json=LIMIT, headers=admin), "too_many_changes"
        )
        assert_throttled(await client.delete("/rate-limit/m0", headers=admin), "too_many_changes")
        # Reading is not a change.
        assert (await client.get("/rate-limit/m0", headers=admin)).status_code == 200


def test_the_lockout_is_per_client_address(redis_url: str, prefix: str, tmp_path: Path) -> None:
    env: dict[str, Any] = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "WORKER_METRICS_PORT": "0",
        "ADMIN_TOKEN": ADMIN,
        "AUTH_FAILURES": "3",
    }
    service = ServiceProcess(env).start(tmp_path)

    def client(source: str) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source)
        return httpx.Client(base_url=service.base_url, transport=transport, timeout=10)

    try:
        with client("127.0.0.1") as attacker, client("127.0.0.2") as operator:
            for _ in range(3):
                assert attacker.get("/rate-limit/k", headers=bearer(WRONG)).status_code == 401
            assert_throttled(
                attacker.get("/rate-limit/k", headers=bearer(WRONG)), "too_many_auth_failures"
            )
            assert operator.get("/rate-limit/k", headers=bearer(ADMIN)).status_code == 200
    finally:
        service.stop()
