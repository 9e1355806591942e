"""``ThrottlerMiddleware`` protecting a Litestar app and a Starlette app (through their own
test clients) against a real ``throttler serve``; the Litestar guard; exactness under
concurrency; the failure policy with the service stopped."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from litestar import Litestar, WebSocket, get, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.middleware import DefineMiddleware
from litestar.testing import AsyncTestClient, TestClient
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient as StarletteTestClient
from starlette.testclient import WebSocketDenialResponse

from tests.e2e.client.conftest import DAY_MS, own_service, service_env
from throttler_client import AsyncThrottlerClient, Limit, ThrottlerClient, ThrottlerMiddleware
from throttler_client.litestar import throttle_guard

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from starlette.requests import Request
    from starlette.websockets import WebSocket as StarletteWebSocket

    from tests.support.service import ServiceProcess
    from throttler_client.middleware import Cost, Scope

#: A Litestar app protected by the middleware, in its test client, and its Throttler client.
Protected = tuple["TestClient[Litestar]", AsyncThrottlerClient]
RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "ratelimit-policy", "ratelimit")


@pytest.fixture
def admin(service: ServiceProcess) -> Iterator[ThrottlerClient]:
    """A plain client to set the limits the apps are held to."""
    with ThrottlerClient(service.base_url, timeout=10) as client:
        yield client


@pytest.fixture
def litestar(service: ServiceProcess, prefix: str) -> Iterator[Protected]:
    """The Litestar app of litestar_app() in its test client, and its Throttler client."""
    throttler = AsyncThrottlerClient(service.base_url, timeout=10)
    with TestClient(litestar_app(throttler, prefix)) as app:
        yield app, throttler


def keyed(prefix: str) -> Any:
    """The key function of the tests: ``<prefix>:<user>`` from the ``x-user`` header; requests
    without one (and ``/health``) are exempt."""

    def key(scope: Scope) -> str | None:
        headers = dict(scope["headers"])
        user = headers.get(b"x-user")
        if scope["path"] == "/health" or user is None:
            return None
        return f"{prefix}:{user.decode()}"

    return key


def litestar_app(throttler: AsyncThrottlerClient, prefix: str, cost: Cost = 1) -> Litestar:
    @get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @get("/export", guards=[throttle_guard(throttler, key=lambda _: f"{prefix}:export", cost=2)])
    async def export() -> dict[str, str]:
        return {"export": "done"}

    @websocket("/ws")
    async def socket(socket: WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        await socket.send_json({"hello": "socket"})
        await socket.close()

    middleware = DefineMiddleware(
        ThrottlerMiddleware, client=throttler, key=keyed(prefix), cost=cost
    )
    return Litestar(
        [hello, health, export, socket], middleware=[middleware], on_shutdown=[throttler.aclose]
    )


def assert_denied(status: int, headers: Any, body: Any, limit: int) -> None:
    assert status == 429
    assert body["error"] == "rate_limit_exceeded"
    assert body["retry_after_ms"] > 0
    assert body["message"] == f"rate limit exceeded; retry after {body['retry_after_ms']} ms"
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit"] == str(limit)
    assert headers["x-ratelimit-remaining"] == "0"


def test_a_litestar_app(litestar: Protected, admin: ThrottlerClient, prefix: str) -> None:
    app, throttler = litestar
    admin.set_limit(f"{prefix}:alice", Limit(2, DAY_MS))
    alice = {"x-user": "alice"}
    first = app.get("/hello", headers=alice)
    assert (first.status_code, first.json()) == (200, {"hello": "world"})
    assert all(name in first.headers for name in RATE_HEADERS)
    assert first.headers["x-ratelimit-remaining"] == "1"
    assert app.get("/hello", headers=alice).headers["x-ratelimit-remaining"] == "0"

    denied = app.get("/hello", headers=alice)
    assert_denied(denied.status_code, denied.headers, denied.json(), limit=2)
    # the denial cache answered the second denial: same answer, no request
    again = app.get("/hello", headers=alice)
    assert_denied(again.status_code, again.headers, again.json(), limit=2)
    assert throttler.denial_cache.saved == 1

    # exempt: no key, no check, no headers; other callers are charged separately
    health = app.get("/health", headers=alice)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert not any(name in health.headers for name in RATE_HEADERS)
    assert app.get("/hello").status_code == 200
    assert app.get("/hello", headers={"x-user": "bob"}).status_code == 200

    # an invalid key is the caller's input: 400, not a 500
    bad = app.get("/hello", headers={"x-user": "not ok"})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_key")


def test_the_litestar_guard_charges_its_own_key_and_cost(
    litestar: Protected, admin: ThrottlerClient, prefix: str
) -> None:
    app, _ = litestar
    admin.set_limit(f"{prefix}:export", Limit(3, DAY_MS))
    assert app.get("/export").json() == {"export": "done"}  # 2 of 3 tokens
    denied = app.get("/export")
    assert denied.status_code == 429
    assert int(denied.headers["retry-after"]) >= 1
    assert denied.headers["x-ratelimit-limit"] == "3"
    assert admin.peek(f"{prefix}:export").remaining == 1


def test_a_litestar_websocket_is_limited_at_the_handshake(
    litestar: Protected, admin: ThrottlerClient, prefix: str
) -> None:
    app, _ = litestar
    admin.set_limit(f"{prefix}:carol", Limit(1, DAY_MS))
    with app.websocket_connect("/ws", headers={"x-user": "carol"}) as socket:
        assert socket.receive_json() == {"hello": "socket"}
        assert dict(socket.extra_headers or [])[b"x-ratelimit-remaining"] == b"0"
    # Litestar's test client has no denial responses: the handshake is closed (1008)
    with pytest.raises(WebSocketDisconnect) as refused:
        app.websocket_connect("/ws", headers={"x-user": "carol"}).__enter__()
    assert refused.value.code == 1008
    assert "rate limit exceeded" in str(refused.value.detail)


def starlette_app(throttler: AsyncThrottlerClient, prefix: str) -> Starlette:
    async def hello(_: Request) -> JSONResponse:
        return JSONResponse({"hello": "world"}, headers={"x-ratelimit-limit": "app's own"})

    async def socket(ws: StarletteWebSocket) -> None:
        await ws.accept()
        await ws.send_json({"hello": "socket"})
        await ws.close()

    def cost(scope: Scope) -> int:
        return 2 if scope.get("method") == "POST" else 1

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with throttler:
            yield

    return Starlette(
        routes=[Route("/hello", hello, methods=["GET", "POST"]), WebSocketRoute("/ws", socket)],
        middleware=[
            Middleware(ThrottlerMiddleware, client=throttler, key=keyed(prefix), cost=cost)
        ],
        lifespan=lifespan,
    )


def test_a_starlette_app(service: ServiceProcess, admin: ThrottlerClient, prefix: str) -> None:
    admin.set_limit(f"{prefix}:dave", Limit(4, DAY_MS))
    admin.set_limit(f"{prefix}:erin", Limit(1, DAY_MS))
    throttler = AsyncThrottlerClient(service.base_url, timeout=10)
    with StarletteTestClient(starlette_app(throttler, prefix)) as app:
        dave = {"x-user": "dave"}
        posted = app.post("/hello", headers=dave)  # costs 2
        assert (posted.status_code, posted.json()) == (200, {"hello": "world"})
        assert posted.headers["x-ratelimit-remaining"] == "2"
        # a header the app set itself is left alone
        assert posted.headers.get_list("x-ratelimit-limit") == ["app's own"]
        assert app.get("/hello", headers=dave).headers["x-ratelimit-remaining"] == "1"
        denied = app.post("/hello", headers=dave)  # 2 > 1 left
        assert denied.status_code == 429
        assert denied.json()["error"] == "rate_limit_exceeded"
        assert int(denied.headers["retry-after"]) >= 1
        assert app.get("/hello", headers=dave).status_code == 200  # 1 token still fits

        erin = {"x-user": "erin"}
        with app.websocket_connect("/ws", headers=erin) as socket:
            assert socket.receive_json() == {"hello": "socket"}
        # Starlette's test client speaks the denial-response extension: a real 429
        with pytest.raises(WebSocketDenialResponse) as refused:
            app.websocket_connect("/ws", headers=erin).__enter__()
        assert refused.value.status_code == 429
        assert refused.value.json()["error"] == "rate_limit_exceeded"
        assert int(refused.value.headers["retry-after"]) >= 1


@pytest.mark.anyio
async def test_exactly_the_limit_of_many_concurrent_requests_passes(
    service: ServiceProcess, admin: ThrottlerClient, prefix: str
) -> None:
    limit, requests = 50, 200
    admin.set_limit(f"{prefix}:crowd", Limit(limit, DAY_MS))
    # closed: a request the service could not decide would be a 503, never a silent pass
    throttler = AsyncThrottlerClient(service.base_url, timeout=30, pool_size=requests)
    statuses: list[int] = []
    async with AsyncTestClient(litestar_app(throttler, prefix)) as app:

        async def one() -> None:
            statuses.append((await app.get("/hello", headers={"x-user": "crowd"})).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(requests):
                tg.start_soon(one)
    assert Counter(statuses) == {200: limit, 429: requests - limit}
    assert admin.peek(f"{prefix}:crowd").remaining == 0


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_the_failure_policy_with_the_service_stopped(
    policy: Any, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    with own_service(service_env(redis_url), tmp_path) as own:
        throttler = AsyncThrottlerClient(own.base_url, failure_policy=policy)
        with TestClient(litestar_app(throttler, prefix)) as app:
            assert app.get("/hello", headers={"x-user": "frank"}).status_code == 200
            own.stop()
            answer = app.get("/hello", headers={"x-user": "frank"})
    if policy == "open":
        assert (answer.status_code, answer.json()) == (200, {"hello": "world"})
        assert answer.headers["x-ratelimit-enforced"] == "false"
        assert "x-ratelimit-remaining" not in answer.headers
    else:
        assert answer.status_code == 503
        assert answer.json()["error"] == "rate_limiter_unavailable"
        assert answer.headers["retry-after"] == "1"
