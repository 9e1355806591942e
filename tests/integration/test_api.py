"""The HTTP API of issue 2 through the whole app in-process, on a real Redis.

Every route, status, header and error: limits CRUD, checks (bodies, inline and default
limits, peeks), the 200/429 bodies and their headers, probes, the OpenAPI document, and
JSON errors for invalid keys, bad bodies, unknown routes, wrong methods and large bodies.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient

from core.settings import Settings, load_settings
from core.version import VERSION
from throttler.cli import build_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx
    from litestar import Litestar

    Client = AsyncTestClient[Litestar]

pytestmark = pytest.mark.anyio

LIMIT_10_PER_MIN = {"requests": 10, "window_ms": 60000}
ALGORITHMS = ["token_bucket", "gcra", "sliding_window", "fixed_window"]
BUCKETS = ("token_bucket", "gcra")
ALLOWED_KEYS = {"allowed", "remaining", "limit", "reset_after_ms"}
# Issue 2 lists allowed, remaining, limit, retry_after_ms, error, message; the service also
# reports reset_after_ms (documented in the README walkthrough and docs/api.md).
DENIED_KEYS = {
    "allowed",
    "remaining",
    "limit",
    "retry_after_ms",
    "reset_after_ms",
    "error",
    "message",
}
STATUS_KEYS = {
    "key",
    "requests",
    "window_ms",
    "algorithm",
    "burst",
    "limit",
    "remaining",
    "reset_after_ms",
    # issue 10: where the limits come from, and every limit's usage
    "source",
    "policy",
    "shadow",
    "limits",
}


def _settings(redis_url: str, prefix: str, **env: str) -> Settings:
    # The in-process worker finishes its blocking stream read before it stops, so a short
    # WORKER_BLOCK_MS keeps each app's shutdown (one per test) well under a second.
    base = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "APPLY_WAIT_MS": "5000"}
    base["INLINE_LIMITS"] = "true"  # the checks below create limits inline
    return load_settings({**base, "WORKER_BLOCK_MS": "50", **env}, env_file=None)


@pytest.fixture
def settings(redis_url: str, prefix: str) -> Settings:
    """conftest's settings (used by its ``client``), with the short worker block."""
    return _settings(redis_url, prefix)


@asynccontextmanager
async def app_client(redis_url: str, prefix: str, **env: str) -> AsyncIterator[Client]:
    """The whole app with extra settings (``env``), on the session's Redis."""
    async with AsyncTestClient(app=build_app(_settings(redis_url, prefix, **env))) as test_client:
        yield test_client


def error_of(resp: httpx.Response, status: int, code: str) -> str:
    """Assert ``resp`` is exactly ``{"error": code, "message": text}``; return the text."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"].strip()
    return str(body["message"])


async def create(client: Client, key: str, status: int = 201, **limit: Any) -> dict[str, Any]:
    resp = await client.post(f"/rate-limit/{key}", json=limit)
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def status_of(client: Client, key: str) -> dict[str, Any]:
    resp = await client.get(f"/rate-limit/{key}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    assert set(body) == STATUS_KEYS
    return body


async def check(client: Client, key: str, **body: Any) -> httpx.Response:
    if body:
        return await client.post(f"/rate-limit/{key}/check", json=body)
    return await client.post(f"/rate-limit/{key}/check")


def _ceil_s(ms: int) -> int:
    return -(-ms // 1000)


def assert_rate_headers(
    resp: httpx.Response,
    *,
    algorithm: str,
    requests: int,
    window_ms: int,
    before: float,
    after: float,
) -> None:
    """Every rate-limit header of a check answer, against its body (ALGORITHMS.md)."""
    body = resp.json()
    h = resp.headers
    assert h["x-ratelimit-limit"] == str(body["limit"])
    assert h["x-ratelimit-remaining"] == str(body["remaining"])
    assert h["x-ratelimit-window"] == str(window_ms)
    # Unix seconds: ceil(now + reset_after), with "now" the Redis clock inside [before, after]
    reset_s = body["reset_after_ms"] / 1000
    assert math.ceil(before + reset_s) - 1 <= int(h["x-ratelimit-reset"])
    assert int(h["x-ratelimit-reset"]) <= math.ceil(after + reset_s) + 1
    # The policy announces the capacity (what can be spent at once) and how long that takes
    # to come back (issue 10: remaining never exceeds the q announced).
    capacity = body["limit"]
    refill_ms = -(-capacity * window_ms // requests) if algorithm in BUCKETS else window_ms
    window_s = max(1, _ceil_s(refill_ms))
    assert h["ratelimit-policy"] == f'"{algorithm}";q={capacity};w={window_s}'
    assert body["remaining"] <= capacity
    if resp.status_code == 200:
        assert "retry-after" not in h
        until_more = _ceil_s(body["reset_after_ms"])
    else:
        assert resp.status_code == 429
        until_more = max(1, _ceil_s(body["retry_after_ms"]))
        assert h["retry-after"] == str(until_more)
        assert int(h["retry-after"]) >= 1
    assert h["ratelimit"] == f'"{algorithm}";r={body["remaining"]};t={until_more}'


# --- limits: create, replace, read, delete ------------------------------------------------


async def test_create_is_201_and_replace_is_200_with_the_stored_limit(client: Client) -> None:
    created = await create(client, "free:client-123", 201, **LIMIT_10_PER_MIN)
    assert created == {"requests": 10, "window_ms": 60000, "algorithm": "token_bucket", "burst": 10}
    replacement = {"requests": 20, "window_ms": 30000, "algorithm": "gcra", "burst": 5}
    replaced = await create(client, "free:client-123", 200, **replacement)
    assert replaced == replacement
    stored = await status_of(client, "free:client-123")
    assert {k: stored[k] for k in replacement} == replacement


@pytest.mark.parametrize(
    ("limit", "stored"),
    [
        (
            {"requests": 5, "window_ms": 1000, "algorithm": "sliding_window"},
            {"requests": 5, "window_ms": 1000, "algorithm": "sliding_window", "burst": None},
        ),
        (
            {"requests": 5, "window_ms": 1000, "algorithm": "fixed_window"},
            {"requests": 5, "window_ms": 1000, "algorithm": "fixed_window", "burst": None},
        ),
        (
            {"requests": 5, "window_ms": 1000, "algorithm": "gcra"},
            {"requests": 5, "window_ms": 1000, "algorithm": "gcra", "burst": 5},
        ),
        (
            {"requests": 5, "window_ms": 1000, "burst": 50},
            {"requests": 5, "window_ms": 1000, "algorithm": "token_bucket", "burst": 50},
        ),
        (
            {"requests": 1_000_000_000, "window_ms": 2_678_400_000},
            {
                "requests": 1_000_000_000,
                "window_ms": 2_678_400_000,
                "algorithm": "token_bucket",
                "burst": 1_000_000_000,
            },
        ),
        (
            {"requests": 100_000, "window_ms": 1, "algorithm": "sliding_window"},
            {"requests": 100_000, "window_ms": 1, "algorithm": "sliding_window", "burst": None},
        ),
    ],
)
async def test_the_answer_is_the_stored_limit_with_defaults_filled(
    client: Client, limit: dict[str, Any], stored: dict[str, Any]
) -> None:
    assert await create(client, "k", 201, **limit) == stored
    assert {k: v for k, v in (await status_of(client, "k")).items() if k in stored} == stored


async def test_a_valid_key_of_256_characters_works(client: Client) -> None:
    key = "k" * 255 + ":"
    await create(client, key, 201, **LIMIT_10_PER_MIN)
    assert (await status_of(client, key))["key"] == key


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_replacing_with_the_same_algorithm_keeps_what_was_spent(
    client: Client, algorithm: str
) -> None:
    limit = {"requests": 10, "window_ms": 60000, "algorithm": algorithm}
    await create(client, "k", 201, **limit)
    assert (await check(client, "k", tokens=4)).json()["remaining"] == 6
    # Same algorithm and capacity, so "what was spent" means the same under every reading.
    await create(client, "k", 200, **limit)
    assert (await status_of(client, "k"))["remaining"] == 6
    assert (await check(client, "k", tokens=0)).json()["remaining"] == 6


async def test_replacing_a_bucket_s_window_keeps_its_tokens(client: Client) -> None:
    await create(client, "k", 201, requests=10, window_ms=60000, burst=10)
    await check(client, "k", tokens=4)
    await create(client, "k", 200, requests=10, window_ms=120000, burst=10)
    state = await status_of(client, "k")
    assert (state["window_ms"], state["remaining"]) == (120000, 6)


async def test_replacing_a_sliding_window_keeps_its_log(client: Client) -> None:
    await create(client, "k", 201, requests=10, window_ms=60000, algorithm="sliding_window")
    await check(client, "k", tokens=4)
    await create(client, "k", 200, requests=5, window_ms=60000, algorithm="sliding_window")
    assert (await status_of(client, "k"))["remaining"] == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [("token_bucket", "gcra"), ("gcra", "sliding_window"), ("sliding_window", "fixed_window")],
)
async def test_changing_the_algorithm_starts_fresh(client: Client, first: str, second: str) -> None:
    await create(client, "k", 201, requests=10, window_ms=60000, algorithm=first)
    assert (await check(client, "k", tokens=7)).json()["remaining"] == 3
    await create(client, "k", 200, requests=10, window_ms=60000, algorithm=second)
    state = await status_of(client, "k")
    assert (state["algorithm"], state["remaining"]) == (second, 10)


async def test_get_shows_live_state_without_consuming(client: Client) -> None:
    await create(client, "free:client-123", 201, **LIMIT_10_PER_MIN)
    await check(client, "free:client-123", tokens=3)
    seen = [await status_of(client, "free:client-123") for _ in range(3)]
    for state in seen:
        assert state["key"] == "free:client-123"
        assert (state["requests"], state["window_ms"]) == (10, 60000)
        assert (state["algorithm"], state["burst"]) == ("token_bucket", 10)
        assert (state["limit"], state["remaining"]) == (10, 7)
        assert 0 < state["reset_after_ms"] <= 18000
    assert (await check(client, "free:client-123")).json()["remaining"] == 6


async def own_limit(client: Client, key: str) -> bool:
    """True when the key has a limit of its own (GET answers any key: issue 10)."""
    return bool((await status_of(client, key))["source"] == "key")


async def test_delete_of_a_key_without_a_limit_is_404_and_get_shows_the_default(
    client: Client,
) -> None:
    assert not await own_limit(client, "nobody")
    error_of(await client.delete("/rate-limit/nobody"), 404, "not_found")


async def test_a_key_on_the_default_limit_has_no_limit_of_its_own(client: Client) -> None:
    assert (await check(client, "defaulted")).status_code == 200
    state = await status_of(client, "defaulted")
    assert (state["source"], state["remaining"]) == ("default", 99)


async def test_delete_returns_the_limit_and_removes_limit_and_state(client: Client) -> None:
    await create(client, "k", 201, **LIMIT_10_PER_MIN)
    await check(client, "k", tokens=4)
    resp = await client.delete("/rate-limit/k")
    assert resp.status_code == 200
    assert resp.json() == {
        "requests": 10,
        "window_ms": 60000,
        "algorithm": "token_bucket",
        "burst": 10,
    }
    assert not await own_limit(client, "k")
    error_of(await client.delete("/rate-limit/k"), 404, "not_found")
    # the key falls back to the default limit, and a new limit starts from full
    assert (await check(client, "k", tokens=0)).json()["limit"] == 100
    await create(client, "k", 201, **LIMIT_10_PER_MIN)
    assert (await status_of(client, "k"))["remaining"] == 10


# --- checks --------------------------------------------------------------------------------


async def test_check_body_is_optional_in_every_form(client: Client) -> None:
    await create(client, "k", 201, requests=100, window_ms=3_600_000)
    url = "/rate-limit/k/check"
    answers = [
        await client.post(url),  # no body, no Content-Type
        await client.post(url, content=b""),  # empty body
        await client.post(url, json={}),
        await client.post(url, json={"tokens": 3}),
        await client.post(url, content=b"null", headers={"content-type": "application/json"}),
        await client.post(
            url,
            content=b'{"tokens": 4}',
            headers={"content-type": "application/json; charset=utf-8"},
        ),
    ]
    assert [a.status_code for a in answers] == [200] * 6
    assert [a.json()["remaining"] for a in answers] == [99, 98, 97, 94, 93, 89]


async def test_tokens_zero_peeks_without_consuming(client: Client) -> None:
    await create(client, "k", 201, **LIMIT_10_PER_MIN)
    await check(client, "k", tokens=4)
    peeks = [await check(client, "k", tokens=0) for _ in range(3)]
    for peek in peeks:
        assert peek.status_code == 200
        assert peek.json()["allowed"] is True
        assert peek.json()["remaining"] == 6
    await check(client, "k", tokens=6)
    empty = await check(client, "k", tokens=0)
    assert (empty.status_code, empty.json()["remaining"]) == (200, 0)
    assert (await check(client, "k")).status_code == 429


async def test_peek_on_a_key_without_state_reports_a_full_limit(client: Client) -> None:
    await create(client, "k", 201, **LIMIT_10_PER_MIN)
    body = (await check(client, "k", tokens=0)).json()
    assert body == {"allowed": True, "remaining": 10, "limit": 10, "reset_after_ms": 0}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_an_inline_limit_creates_the_limit_when_the_key_has_none(
    client: Client, algorithm: str
) -> None:
    resp = await check(client, "new", tokens=2, requests=5, window_ms=60000, algorithm=algorithm)
    assert resp.status_code == 200
    assert (resp.json()["limit"], resp.json()["remaining"]) == (5, 3)
    state = await status_of(client, "new")
    assert (state["requests"], state["window_ms"], state["algorithm"]) == (5, 60000, algorithm)
    assert state["remaining"] == 3


async def test_an_inline_limit_without_algorithm_is_a_token_bucket(client: Client) -> None:
    resp = await check(client, "new", requests=5, window_ms=60000, burst=8)
    assert (resp.json()["limit"], resp.json()["remaining"]) == (8, 7)
    state = await status_of(client, "new")
    assert (state["algorithm"], state["burst"]) == ("token_bucket", 8)


async def test_an_inline_limit_never_replaces_an_existing_one(client: Client) -> None:
    await create(client, "k", 201, **LIMIT_10_PER_MIN)
    resp = await check(client, "k", requests=2, window_ms=1000, algorithm="fixed_window")
    assert (resp.json()["limit"], resp.json()["remaining"]) == (10, 9)
    state = await status_of(client, "k")
    assert (state["requests"], state["window_ms"], state["algorithm"]) == (
        10,
        60000,
        "token_bucket",
    )


async def test_the_default_limit_comes_from_the_settings(client: Client) -> None:
    # DEFAULT_CAPACITY 100 (burst), DEFAULT_REFILL_RATE 10 tokens/s
    before = time.time()
    resp = await check(client, "user-42")
    after = time.time()
    assert resp.json() == {"allowed": True, "remaining": 99, "limit": 100, "reset_after_ms": 100}
    assert_rate_headers(
        resp, algorithm="token_bucket", requests=10, window_ms=1000, before=before, after=after
    )


async def test_default_capacity_and_refill_rate_are_honoured(redis_url: str, prefix: str) -> None:
    # 7 tokens, refilled at 0.001/s (one per 1000 s): nothing refills during the test.
    async with app_client(
        redis_url, prefix, DEFAULT_CAPACITY="7", DEFAULT_REFILL_RATE="0.001"
    ) as client:
        answers = [await check(client, "user-42") for _ in range(8)]
        assert [a.status_code for a in answers] == [200] * 7 + [429]
        first, denied = answers[0].json(), answers[-1].json()
        assert first == {"allowed": True, "remaining": 6, "limit": 7, "reset_after_ms": 1_000_000}
        assert 999_000 < denied["retry_after_ms"] <= 1_000_000
        # 7 at once, refilled in 7,000 s
        assert answers[0].headers["ratelimit-policy"] == '"token_bucket";q=7;w=7000'
        assert answers[0].headers["x-ratelimit-window"] == "1000000"
        error_of(await check(client, "user-42", tokens=8), 400, "validation_error")


@pytest.mark.parametrize(
    ("limit", "capacity"),
    [
        ({"requests": 10, "window_ms": 60000}, 10),
        ({"requests": 10, "window_ms": 60000, "burst": 3}, 3),
        ({"requests": 4, "window_ms": 60000, "algorithm": "sliding_window"}, 4),
        ({"requests": 4, "window_ms": 60000, "algorithm": "fixed_window"}, 4),
        ({"requests": 4, "window_ms": 60000, "algorithm": "gcra", "burst": 2}, 2),
    ],
)
async def test_more_tokens_than_the_capacity_is_a_validation_error(
    client: Client, limit: dict[str, Any], capacity: int
) -> None:
    await create(client, "k", 201, **limit)
    message = error_of(await check(client, "k", tokens=capacity + 1), 400, "validation_error")
    assert "tokens" in message
    assert "capacity" in message
    assert f"({capacity})" in message
    assert (await status_of(client, "k"))["remaining"] == capacity  # nothing spent
    assert (await check(client, "k", tokens=capacity)).status_code == 200


async def test_more_tokens_than_an_inline_or_default_capacity_is_a_validation_error(
    client: Client,
) -> None:
    resp = await check(client, "new", tokens=6, requests=5, window_ms=1000)
    assert "capacity" in error_of(resp, 400, "validation_error")
    assert not await own_limit(client, "new")  # a refusal stores nothing
    assert "capacity" in error_of(await check(client, "dflt", tokens=101), 400, "validation_error")


async def test_allowed_and_denied_bodies_are_exactly_as_specified(client: Client) -> None:
    await create(client, "k", 201, requests=2, window_ms=60000)
    allowed = await check(client, "k", tokens=2)
    assert allowed.status_code == 200
    assert allowed.headers["content-type"].startswith("application/json")
    body = allowed.json()
    assert set(body) == ALLOWED_KEYS
    assert body == {"allowed": True, "remaining": 0, "limit": 2, "reset_after_ms": 60000}

    denied = await check(client, "k")
    assert denied.status_code == 429
    assert denied.headers["content-type"].startswith("application/json")
    body = denied.json()
    assert set(body) == DENIED_KEYS
    assert body["allowed"] is False
    assert (body["remaining"], body["limit"]) == (0, 2)
    assert body["error"] == "rate_limit_exceeded"
    assert 29000 < body["retry_after_ms"] <= 30000  # one token every 30 s
    assert 59000 < body["reset_after_ms"] <= 60000
    assert body["message"] == f"rate limit exceeded; retry after {body['retry_after_ms']} ms"
    for value in (body["remaining"], body["limit"], body["retry_after_ms"], body["reset_after_ms"]):
        assert isinstance(value, int)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("window_ms", [500, 1500, 60000])
async def test_every_check_carries_every_rate_limit_header(
    client: Client, algorithm: str, window_ms: int
) -> None:
    await create(client, "k", 201, requests=3, window_ms=window_ms, algorithm=algorithm)
    answers = []
    # A window may end between two checks (fixed window, 500 ms), so check until a 429.
    for _ in range(20):
        before = time.time()
        resp = await check(client, "k", tokens=2)
        after = time.time()
        assert resp.status_code in (200, 429)
        assert_rate_headers(
            resp,
            algorithm=algorithm,
            requests=3,
            window_ms=window_ms,
            before=before,
            after=after,
        )
        answers.append(resp.status_code)
        if resp.status_code == 429:
            break
    assert answers[0] == 200
    assert answers[-1] == 429


async def test_retry_after_is_at_least_one_second(client: Client) -> None:
    # one request per 600 ms: every wait is below a second, and Retry-After still says 1
    await create(client, "k", 201, requests=1, window_ms=600)
    for _ in range(50):
        resp = await check(client, "k")
        if resp.status_code == 429:
            break
    assert resp.status_code == 429
    assert 0 < resp.json()["retry_after_ms"] <= 600
    assert resp.headers["retry-after"] == "1"
    assert resp.headers["ratelimit"].endswith(";t=1")


async def test_a_burst_of_15_on_10_per_minute_gives_ten_200s_then_429s(client: Client) -> None:
    await create(client, "free:client-123", 201, **LIMIT_10_PER_MIN)
    codes = [(await check(client, "free:client-123")).status_code for _ in range(15)]
    assert codes == [200] * 10 + [429] * 5


async def test_a_concurrent_burst_admits_exactly_the_limit(client: Client) -> None:
    await create(client, "k", 201, **LIMIT_10_PER_MIN)
    codes: list[int] = []

    async def one() -> None:
        codes.append((await check(client, "k")).status_code)

    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(one)
    assert sorted(codes) == [200] * 10 + [429] * 20


# --- probes and the OpenAPI document -------------------------------------------------------


async def test_health(client: Client) -> None:
    resp = await client.get("/health")
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"status", "version", "timestamp"}
    assert (body["status"], body["version"]) == ("healthy", VERSION)
    stamp = dt.datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert stamp.tzinfo is not None
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 60


async def test_ready_with_redis_up(client: Client) -> None:
    resp = await client.get("/ready")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready", "redis": "connected"}


ROUTES = {
    ("/health", "get"): {"200"},
    ("/ready", "get"): {"200", "503"},
    ("/rate-limit/{key}", "get"): {"200", "400", "503"},
    ("/rate-limit/{key}", "post"): {"200", "201", "400", "413", "503"},
    ("/rate-limit/{key}", "delete"): {"200", "400", "404", "503"},
    ("/rate-limit/{key}/check", "post"): {"200", "400", "413", "429", "503"},
}


def _ref(schema: dict[str, Any]) -> set[str]:
    """The component names a schema refers to (directly or through oneOf/anyOf)."""
    refs = set()
    if "$ref" in schema:
        refs.add(str(schema["$ref"]).rsplit("/", 1)[-1])
    for option in schema.get("oneOf", []) + schema.get("anyOf", []):
        refs |= _ref(option)
    return refs


def _response_refs(op: dict[str, Any], status: str) -> set[str]:
    return _ref(op["responses"][status]["content"]["application/json"]["schema"])


async def test_openapi_describes_every_route_body_and_error(client: Client) -> None:
    resp = await client.get("/schema/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for (path, method), statuses in ROUTES.items():
        op = paths[path][method]
        assert statuses <= set(op["responses"]), (path, method, set(op["responses"]))
        for status in statuses:
            if status.startswith(("4", "5")) and status not in ("429", "503"):
                assert _response_refs(op, status) == {"ErrorResponse"}, (path, method, status)
    ops = {(p, m): paths[p][m] for p, m in ROUTES}
    # (200/201 of POST and DELETE currently render as a oneOf that also lists the 202 and
    # error bodies; that is imprecise but still describes the body.)
    assert _response_refs(ops["/rate-limit/{key}", "post"], "201") == {"LimitBody"}
    assert _response_refs(ops["/rate-limit/{key}", "post"], "200") == {"LimitBody"}
    assert _response_refs(ops["/rate-limit/{key}", "delete"], "200") == {"LimitBody"}
    assert _response_refs(ops["/rate-limit/{key}", "get"], "200") == {"LimitStatus"}
    assert "CheckAllowed" in _response_refs(ops["/rate-limit/{key}/check", "post"], "200")
    assert _response_refs(ops["/rate-limit/{key}/check", "post"], "429") == {"CheckDenied"}
    assert _response_refs(ops["/rate-limit/{key}/check", "post"], "503") == {"ErrorResponse"}
    assert _response_refs(ops["/ready", "get"], "503") == {"ReadyResponse"}
    assert _response_refs(ops["/health", "get"], "200") == {"HealthResponse"}
    post_body = ops["/rate-limit/{key}", "post"]["requestBody"]["content"]["application/json"]
    assert _ref(post_body["schema"]) == {"LimitBody"}  # one limit, or several (issue 10)
    check_body = ops["/rate-limit/{key}/check", "post"]["requestBody"]["content"]
    assert "CheckRequest" in _ref(check_body["application/json"]["schema"])

    schemas = doc["components"]["schemas"]
    limit = schemas["Limit"]
    assert set(limit["required"]) == {"requests", "window_ms"}
    assert set(limit["properties"]) == {
        "requests",
        "window_ms",
        "algorithm",
        "burst",
        "calendar",
    }
    assert limit["properties"]["requests"]["maximum"] == 1_000_000_000
    assert limit["properties"]["window_ms"]["maximum"] == 2_678_400_000
    assert set(limit["properties"]["algorithm"]["enum"]) == {*ALGORITHMS, "concurrency"}
    assert set(schemas["CheckRequest"]["properties"]) >= {"tokens", "requests", "window_ms"}
    # (CheckAllowed may carry an optional `enforced`, present only under FAILURE_POLICY=open)
    assert set(schemas["CheckAllowed"]["required"]) == ALLOWED_KEYS
    assert set(schemas["CheckAllowed"]["properties"]) >= ALLOWED_KEYS
    assert set(schemas["CheckDenied"]["properties"]) == DENIED_KEYS | {"policy"}  # issue 10
    assert set(schemas["ErrorResponse"]["properties"]) == {"error", "message"}
    assert set(schemas["LimitStatus"]["properties"]) == STATUS_KEYS
    assert set(schemas["HealthResponse"]["properties"]) == {"status", "version", "timestamp"}
    assert set(schemas["ReadyResponse"]["properties"]) == {"status", "redis"}


async def test_openapi_marks_the_check_body_optional(client: Client) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    assert (
        doc["paths"]["/rate-limit/{key}/check"]["post"]["requestBody"].get("required") is not True
    )


async def test_the_interactive_api_documentation_is_served(client: Client) -> None:
    resp = await client.get("/schema")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")


# --- errors --------------------------------------------------------------------------------

INVALID_KEYS = [
    "a%7Bb",  # {
    "a%7Db",  # }
    "a%20b",  # space
    "a%00",
    "a*b",  # * (patterns of policies)
    "k" * 257,
    "%C3%A9" * 129,  # 258 bytes of UTF-8 in 129 characters
]


# The error tables below run in one app each: an app start and stop costs far more than
# the requests, and each failure message names its case.


async def test_invalid_keys_are_400_invalid_key_on_every_route(client: Client) -> None:
    for key in INVALID_KEYS:
        url = f"/rate-limit/{key}"
        for resp in [
            await client.get(url),
            await client.delete(url),
            await client.post(url, json=LIMIT_10_PER_MIN),
            await client.post(f"{url}/check"),
            await client.post(f"{url}/check", json={"tokens": 1, **LIMIT_10_PER_MIN}),
        ]:
            message = error_of(resp, 400, "invalid_key")
            assert "1-256 characters" in message, key


async def test_a_slash_in_a_path_is_an_unknown_route(client: Client) -> None:
    error_of(await client.get("/rate-limit/a/b"), 404, "not_found")
    error_of(await client.post("/rate-limit/a/b/check"), 404, "not_found")


async def test_an_encoded_slash_in_a_key_is_an_invalid_key(client: Client) -> None:
    # docs/api.md: a `/` in a key is `400 invalid_key` on every route.
    error_of(await client.get("/rate-limit/a%2Fb"), 400, "invalid_key")
    error_of(await client.delete("/rate-limit/a%2Fb"), 400, "invalid_key")
    message = error_of(await client.post("/rate-limit/a%2Fb/check"), 400, "invalid_key")
    assert "'/'" in message


LIMIT_ERRORS: list[tuple[Any, str]] = [
    ({"requests": 0, "window_ms": 60000}, "requests"),
    ({"requests": -5, "window_ms": 60000}, "requests"),
    ({"requests": 1_000_000_001, "window_ms": 60000}, "requests"),
    ({"requests": 10, "window_ms": 0}, "window_ms"),
    ({"requests": 10, "window_ms": 2_678_400_001}, "window_ms"),
    ({"requests": 100_001, "window_ms": 60000, "algorithm": "sliding_window"}, "100000"),
    ({"requests": 10, "window_ms": 60000, "extra": 1}, "extra"),
    ({"requests": 10}, "window_ms"),
    ({"window_ms": 60000}, "requests"),
    ({}, "requests"),
    ({"requests": 10.5, "window_ms": 60000}, "requests"),
    ({"requests": True, "window_ms": 60000}, "requests"),
    ({"requests": [10], "window_ms": 60000}, "requests"),
    ({"requests": None, "window_ms": 60000}, "requests"),
    ({"requests": 10, "window_ms": 60000, "algorithm": "leaky"}, "algorithm"),
    ({"requests": 10, "window_ms": 60000, "algorithm": 3}, "algorithm"),
    ({"requests": 10, "window_ms": 60000, "burst": 0}, "burst"),
    ({"requests": 10, "window_ms": 60000, "burst": 1_000_000_001}, "burst"),
    ({"requests": 10, "window_ms": 60000, "algorithm": "fixed_window", "burst": 5}, "burst"),
    ({"requests": 10, "window_ms": 60000, "algorithm": "sliding_window", "burst": 5}, "burst"),
    (b"{", "JSON"),
    (b'{"requests": 10, "window_ms": 60000', "JSON"),
    (b"requests=10&window_ms=60000", "JSON"),
    (b'{"requests": 1e400, "window_ms": 60000}', "JSON"),
    (b"[" * 100_000, "JSON"),
    (b"", "body"),
    (b"[]", "object"),
    (b'"limit"', "object"),
    (b"null", "object"),
]


async def post_raw(client: Client, url: str, body: Any) -> httpx.Response:
    """POST ``body``: bytes as they are (as JSON), anything else encoded as JSON."""
    if isinstance(body, bytes):
        return await client.post(url, content=body, headers={"content-type": "application/json"})
    return await client.post(url, json=body)


async def test_bad_limit_bodies_are_400_validation_error_naming_the_field(client: Client) -> None:
    for body, named in LIMIT_ERRORS:
        resp = await post_raw(client, "/rate-limit/k", body)
        case = repr(body)[:80]
        assert named in error_of(resp, 400, "validation_error"), case
        assert not await own_limit(client, "k"), f"{case} stored a limit"


async def test_a_number_as_a_string_is_a_wrong_type(client: Client) -> None:
    resp = await client.post("/rate-limit/k", json={"requests": "10", "window_ms": 60000})
    assert "requests" in error_of(resp, 400, "validation_error")


CHECK_ERRORS: list[tuple[Any, str]] = [
    ({"tokens": -1}, "tokens"),
    ({"tokens": 1_000_000_001}, "tokens"),
    ({"tokens": 1.5}, "tokens"),
    ({"tokens": "a"}, "tokens"),
    ({"tokens": None}, "tokens"),
    ({"tokens": [1]}, "tokens"),
    ({"tokenz": 1}, "tokenz"),
    ({"requests": 5}, "window_ms"),
    ({"window_ms": 5}, "requests"),
    ({"algorithm": "gcra"}, "requests"),
    ({"burst": 3}, "requests"),
    ({"requests": 0, "window_ms": 1000}, "requests"),
    ({"requests": 5, "window_ms": 2_678_400_001}, "window_ms"),
    ({"requests": 5, "window_ms": 1000, "algorithm": "leaky"}, "algorithm"),
    ({"requests": 5, "window_ms": 1000, "algorithm": "sliding_window", "burst": 2}, "burst"),
    ({"requests": 100_001, "window_ms": 1000, "algorithm": "sliding_window"}, "100000"),
    (b"{", "JSON"),
    (b'{"tokens": 1}garbage', "JSON"),
    (b"[" * 100_000, "JSON"),
    (b"[]", "object"),
    (b"7", "object"),
]


async def test_bad_check_bodies_are_400_validation_error_and_spend_nothing(
    client: Client,
) -> None:
    await create(client, "k", 201, **LIMIT_10_PER_MIN)
    for body, named in CHECK_ERRORS:
        resp = await post_raw(client, "/rate-limit/k/check", body)
        case = repr(body)[:80]
        assert named in error_of(resp, 400, "validation_error"), case
        assert (await status_of(client, "k"))["remaining"] == 10, case
        # an invalid body never creates a limit for a key that has none
        resp = await post_raw(client, "/rate-limit/fresh/check", body)
        assert resp.status_code == 400, case
        assert not await own_limit(client, "fresh"), case


async def test_tokens_as_a_string_is_a_wrong_type(client: Client) -> None:
    resp = await client.post("/rate-limit/k/check", json={"tokens": "3"})
    assert "tokens" in error_of(resp, 400, "validation_error")


async def test_unknown_routes_are_404_json(client: Client) -> None:
    for path in ["/", "/nope", "/rate-limit/k/x", "/metricz"]:
        assert error_of(await client.get(path), 404, "not_found"), path
        assert error_of(await client.post(path), 404, "not_found"), path
    # GET /rate-limit lists keys (issue 10); other methods are not allowed there.
    error_of(await client.post("/rate-limit"), 405, "method_not_allowed")


WRONG_METHODS = [
    ("PUT", "/rate-limit/k", {"GET", "POST", "DELETE"}),
    ("PATCH", "/rate-limit/k", {"GET", "POST", "DELETE"}),
    ("GET", "/rate-limit/k/check", {"POST"}),
    ("DELETE", "/rate-limit/k/check", {"POST"}),
    ("POST", "/health", {"GET"}),
    ("DELETE", "/ready", {"GET"}),
]


async def test_wrong_methods_are_405_json_with_allow(client: Client) -> None:
    for method, path, allowed in WRONG_METHODS:
        resp = await client.request(method, path)
        error_of(resp, 405, "method_not_allowed")
        assert allowed <= {m.strip() for m in resp.headers["allow"].split(",")}, (method, path)


async def test_oversized_bodies_are_413_json(redis_url: str, prefix: str) -> None:
    async with app_client(redis_url, prefix, MAX_BODY_BYTES="1024") as client:
        padded = b'{"tokens": 1' + b" " * 2000 + b"}"
        for url in ["/rate-limit/k/check", "/rate-limit/k"]:
            resp = await client.post(
                url, content=padded, headers={"content-type": "application/json"}
            )
            error_of(resp, 413, "payload_too_large")
        # a body just under the limit is fine
        fits = b'{"requests": 5, "window_ms": 1000' + b" " * 900 + b"}"
        assert len(fits) < 1024
        resp = await client.post(
            "/rate-limit/k", content=fits, headers={"content-type": "application/json"}
        )
        assert resp.status_code == 201
        resp = await client.post(
            "/rate-limit/k/check",
            content=b'{"tokens": 2' + b" " * 900 + b"}",
            headers={"content-type": "application/json"},
        )
        assert (resp.status_code, resp.json()["remaining"]) == (200, 3)


# --- no input yields a 500 -----------------------------------------------------------------

_FIELDS = st.sampled_from(["tokens", "requests", "window_ms", "algorithm", "burst", "x", ""])
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(ALGORITHMS)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_FIELDS, inner, max_size=5),
    max_leaves=8,
)
_BODIES = st.one_of(
    st.none(),
    st.binary(max_size=64),
    _JSON.map(lambda v: json.dumps(v).encode()),
)
_KEYS = st.one_of(
    st.from_regex(r"[A-Za-z0-9_\-.:]{1,20}", fullmatch=True),
    st.text(min_size=1, max_size=12).map(lambda s: quote(s, safe="")),
)


@hypothesis_settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]),
    key=_KEYS,
    suffix=st.sampled_from(["", "/check"]),
    body=_BODIES,
    content_type=st.sampled_from([None, "application/json", "text/plain"]),
)
async def test_no_input_yields_a_500(
    client: Client,
    method: str,
    key: str,
    suffix: str,
    body: bytes | None,
    content_type: str | None,
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    resp = await client.request(method, f"/rate-limit/{key}{suffix}", content=body, headers=headers)
    assert resp.status_code < 500, (resp.status_code, resp.text)
    if resp.status_code >= 400 and resp.status_code != 429:
        body_json = resp.json()
        assert set(body_json) == {"error", "message"}
        assert all(isinstance(v, str) for v in body_json.values())
