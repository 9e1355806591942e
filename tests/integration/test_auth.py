"""Bearer tokens: ADMIN_TOKEN guards every admin route, CHECK_TOKEN (when set) the checks.

The protected routes are read from the application itself, so a route added later without
a guard fails :func:`test_every_route_is_public_or_guarded`, and one added with a guard is
covered by the refusal tests without editing them. Real `throttler serve` processes show
that tokens never reach the logs and that binding a public address without ADMIN_TOKEN is
warned about.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from litestar.exceptions import WebSocketDisconnect
from litestar.routes import HTTPRoute, WebSocketRoute
from litestar.testing import AsyncTestClient

from api.auth import WS_UNAUTHORIZED, admin_guard, check_guard, notification_guard
from core.embedded import free_port
from core.settings import load_settings
from tests.support.service import ServiceProcess
from throttler.cli import build_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Mapping
    from pathlib import Path

    from litestar import Litestar

    from core.settings import Settings

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}
ADMIN = f"adm-{uuid.uuid4().hex}"
CHECKER = f"chk-{uuid.uuid4().hex}"
#: Routes anyone may call: probes, metrics (keep them internal) and the API description.
PUBLIC = re.compile(r"^/(health|ready|metrics|schema)(/.*)?$")
STREAMS = {"/notifications"}  # an endless response: its accepted case runs on a real server
LIMIT = {"requests": 5, "window_ms": 60000}


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # the template, e.g. /rate-limit/{key}
    guard: str  # "admin" or "check"

    @property
    def url(self) -> str:
        url = self.path.replace("{key}", "auth-key").replace("{dead_id}", "0-1")
        return url.replace("{name}", "auth-policy")

    @property
    def body(self) -> Any:
        if self.path == "/rate-limit/{key}" and self.method == "POST":
            return LIMIT
        if self.path == "/policies/{name}" and self.method == "PUT":
            return {"limits": [LIMIT], "match": ["auth-policy:*"]}
        if self.path == "/check":
            return {"checks": [{"key": "auth-key"}]}
        if self.path.endswith("/release"):
            return {"lease": "no-such-lease"}
        if self.path.endswith("/refund"):
            return {"tokens": 1}
        return None

    @property
    def answers(self) -> set[int]:
        """What the route itself answers past the guard: 404 for a key, lease or dead letter
        that is not there; 409 for an acquire on a key without a concurrency limit."""
        return {200, 201, 404, 409} if self.path.endswith("/acquire") else {200, 201, 404}

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _template(path: str) -> str:
    return path.replace(":str}", "}")


def guarded_routes(app: Litestar) -> list[Route]:
    """Every HTTP route of ``app`` with the guard protecting it (public ones left out)."""
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            guards = handler.guards or []
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                if admin_guard in guards or notification_guard in guards:
                    found.append(Route(method, _template(route.path), "admin"))
                elif check_guard in guards:
                    found.append(Route(method, _template(route.path), "check"))
    return sorted(found, key=str)


def make_settings(redis_url: str, prefix: str, **tokens: str) -> Settings:
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "APPLY_WAIT_MS": "5000"}
    env["WORKER_BLOCK_MS"] = "100"  # the in-process worker stops sooner
    # Every route with every wrong token: the lockout (test_throttle.py) must not interfere.
    env["AUTH_FAILURES"] = "1000000"
    env.update({name.upper(): value for name, value in tokens.items()})
    return load_settings(env, env_file=None)


@pytest.fixture
async def guarded(redis_url: str, prefix: str) -> AsyncIterator[AsyncTestClient[Litestar]]:
    settings = make_settings(redis_url, prefix, admin_token=ADMIN, check_token=CHECKER)
    async with AsyncTestClient(app=build_app(settings)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def right_token(route: Route) -> str:
    return ADMIN if route.guard == "admin" else CHECKER


async def call(
    client: AsyncTestClient[Litestar],
    route: Route,
    headers: Mapping[str, str] | Mapping[bytes, bytes] | None = None,
) -> httpx.Response:
    return await client.request(route.method, route.url, json=route.body, headers=headers)


def assert_refused(resp: httpx.Response, *, invalid: bool) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == "unauthorized"
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="throttler"')
    assert ('error="invalid_token"' in challenge) == invalid


def test_every_route_is_public_or_guarded(redis_url: str, prefix: str) -> None:
    app = build_app(make_settings(redis_url, prefix))
    unguarded = []
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            if not route.route_handler.guards:
                unguarded.append(f"WEBSOCKET {route.path}")
            continue
        assert isinstance(route, HTTPRoute), route
        for handler in route.route_handlers:
            methods = handler.http_methods - {"OPTIONS", "HEAD"}
            if methods and not handler.guards and not PUBLIC.match(_template(route.path)):
                unguarded.append(f"{sorted(methods)} {route.path}")
    assert unguarded == []
    routes = {str(r) for r in guarded_routes(app)}
    # What the issue names, at least (the batch check is guarded like the single one).
    assert routes >= {
        "POST /rate-limit/{key}",
        "GET /rate-limit/{key}",
        "DELETE /rate-limit/{key}",
        "POST /rate-limit/{key}/check",
        "GET /notifications",
        "GET /dead-letters",
        "POST /dead-letters/{dead_id}/replay",
    }
    if any(r.path == "/check" for r in guarded_routes(app)):
        assert "POST /check" in {str(r) for r in guarded_routes(app) if r.guard == "check"}
    # The spend routes are guarded like a check (CHECK_TOKEN).
    spend = {f"POST /rate-limit/{{key}}/{r}" for r in ("acquire", "release", "refund")}
    assert spend <= {str(r) for r in guarded_routes(app) if r.guard == "check"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {ADMIN}"},
        {"Authorization": ADMIN},
        {"X-Api-Key": ADMIN},
    ],
    ids=["none", "empty", "scheme-only", "blank", "basic", "no-scheme", "other-header"],
)
async def test_a_missing_token_is_refused_everywhere(
    guarded: AsyncTestClient[Litestar], headers: dict[str, str]
) -> None:
    for route in guarded_routes(guarded.app):
        assert_refused(await call(guarded, route, headers), invalid=False)


@pytest.mark.parametrize(
    "token",
    [
        "wrong",
        ADMIN[:-1],
        ADMIN + "x",
        ADMIN.upper(),
        CHECKER[:-1],
        "tök-\u00ff",
        "a" * 10_000,
    ],
    ids=["wrong", "prefix", "longer", "case", "check-prefix", "latin-1", "huge"],
)
async def test_a_wrong_token_is_refused_everywhere(
    guarded: AsyncTestClient[Litestar], token: str
) -> None:
    headers = {b"Authorization": f"Bearer {token}".encode("latin-1")}  # the bytes on the wire
    for route in guarded_routes(guarded.app):
        assert_refused(await call(guarded, route, headers), invalid=True)


async def test_the_check_token_opens_no_admin_route(guarded: AsyncTestClient[Litestar]) -> None:
    for route in guarded_routes(guarded.app):
        if route.guard == "admin":
            assert_refused(await call(guarded, route, bearer(CHECKER)), invalid=True)


async def test_the_right_token_is_accepted_everywhere(guarded: AsyncTestClient[Litestar]) -> None:
    seen = []
    for route in guarded_routes(guarded.app):
        if route.path in STREAMS:
            continue
        resp = await call(guarded, route, bearer(right_token(route)))
        # Past the guard: the route's own answer (404 for a key or dead letter that is not
        # there is that too), never 401.
        assert resp.status_code in route.answers, f"{route}: {resp.status_code} {resp.text}"
        seen.append(str(route))
    assert "POST /rate-limit/{key}/check" in seen
    # The scheme is case-insensitive and the token may be padded (RFC 7235).
    for header in (f"bearer {CHECKER}", f"BEARER   {CHECKER}  "):
        resp = await guarded.post("/rate-limit/auth-key/check", headers={"Authorization": header})
        assert resp.status_code == 200, resp.text


async def test_the_notification_websocket_needs_the_admin_token(
    guarded: AsyncTestClient[Litestar],
) -> None:
    for headers, detail in [
        ({}, "missing bearer token"),
        (bearer("wrong"), "invalid bearer token"),
        (bearer(CHECKER), "invalid bearer token"),
    ]:
        with pytest.raises(WebSocketDisconnect) as refused:  # noqa: PT012 - either step
            ws = await guarded.websocket_connect("/notifications/ws", headers=headers)
            with ws:
                ws.receive(timeout=5)
        assert refused.value.code == WS_UNAUTHORIZED
        assert detail in str(refused.value.detail)
    with await guarded.websocket_connect("/notifications/ws", headers=bearer(ADMIN)) as ws:
        assert ws.receive_json(timeout=5)["type"] == "subscribed"


async def test_without_tokens_every_route_is_open(redis_url: str, prefix: str) -> None:
    with_tokens = build_app(make_settings(redis_url, prefix, admin_token=ADMIN))
    async with AsyncTestClient(app=build_app(make_settings(redis_url, prefix))) as client:
        for route in guarded_routes(with_tokens):
            if route.path not in STREAMS:
                resp = await call(client, route)
                assert resp.status_code in route.answers, f"{route}: {resp.text}"


async def test_checks_are_open_unless_check_token_is_set(redis_url: str, prefix: str) -> None:
    settings = make_settings(redis_url, prefix, admin_token=ADMIN)
    async with AsyncTestClient(app=build_app(settings)) as client:
        assert (await client.post("/rate-limit/auth-key/check")).status_code == 200
        assert_refused(await client.get("/rate-limit/auth-key"), invalid=False)
        created = await client.post("/rate-limit/auth-key", json=LIMIT, headers=bearer(ADMIN))
        assert created.status_code == 201, created.text


# --- real processes -------------------------------------------------------------------


@pytest.fixture
def tokened_service(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "ADMIN_TOKEN": ADMIN,
        "CHECK_TOKEN": CHECKER,
        "LOG_LEVEL": "debug",
        "ACCESS_LOG_CHECKS": "true",  # checks are logged too, so their lines are searched
        "WORKER_METRICS_PORT": "0",
        "WORKER_BLOCK_MS": "100",
    }
    service = ServiceProcess(env)
    try:
        yield service.start(tmp_path)
    finally:
        service.stop()


def test_tokens_never_reach_the_logs(tokened_service: ServiceProcess) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    with httpx.Client(base_url=tokened_service.base_url, timeout=10) as http:
        admin, checker = bearer(ADMIN), bearer(CHECKER)
        assert http.post("/rate-limit/logged", json=LIMIT, headers=admin).status_code == 201
        assert http.get("/rate-limit/logged", headers=admin).status_code == 200
        assert http.post("/rate-limit/logged/check", headers=checker).status_code == 200
        assert http.post("/rate-limit/logged/check", headers=bearer(wrong)).status_code == 401
        assert http.get("/rate-limit/logged", headers=bearer(wrong)).status_code == 401
        assert http.get("/dead-letters", headers=admin).status_code == 200
        # an error path too: a bad body with a good token
        assert (
            http.post("/rate-limit/logged", content=b"{", headers={**admin, **JSON}).status_code
            == 400
        )
        # the notification stream, with the admin token: subscribed, then closed
        with http.stream("GET", "/notifications", headers=admin) as stream:
            assert stream.status_code == 200
            assert next(stream.iter_lines()) == "event: subscribed"
    assert tokened_service.stop() == 0
    log = tokened_service.log()
    assert '"logger":"throttler.access"' in log  # requests were logged (at debug level)
    assert "/rate-limit/{key}/check" in log
    for secret in (ADMIN, CHECKER, wrong):
        assert secret not in log


def _upgrade(service: ServiceProcess, headers: dict[str, str]) -> bytes:
    """The status line a WebSocket handshake on /notifications/ws gets."""
    lines = [
        "GET /notifications/ws HTTP/1.1",
        f"Host: 127.0.0.1:{service.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        reply = b""
        while b"\r\n" not in reply:
            data = sock.recv(1024)
            if not data:
                break
            reply += data
    return reply.split(b"\r\n", 1)[0]


def test_the_websocket_on_a_real_server_needs_the_admin_token(
    tokened_service: ServiceProcess,
) -> None:
    assert _upgrade(tokened_service, bearer(ADMIN)).startswith(b"HTTP/1.1 101")
    for headers in ({}, bearer("wrong"), bearer(CHECKER)):
        refused = _upgrade(tokened_service, headers)
        assert refused.startswith(b"HTTP/1.1 403"), refused  # closed before it was accepted


def _wait_for_line(service: ServiceProcess, pattern: str, within: float) -> str:
    deadline = time.monotonic() + within
    while True:
        for line in service.log().splitlines():
            if re.search(pattern, line):
                return line
        assert service.proc is not None
        assert service.proc.poll() is None, service.log()
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{service.log()}"
        time.sleep(0.02)


WARNING = r"binding 0\.0\.0\.0:\d+ without ADMIN_TOKEN \(ALLOW_INSECURE=true\)"


def test_binding_a_public_address_without_admin_token_is_refused(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "WORKER_METRICS_PORT": "0"}
    service = ServiceProcess(env, ["serve", "--bind", f"0.0.0.0:{port}"], port=port)
    try:
        service.start(tmp_path, wait=False)
        assert service.proc is not None
        code = service.proc.wait(timeout=30)
    finally:
        service.stop()
    assert code == 2, service.log()
    assert "not a loopback address and ADMIN_TOKEN is not set" in service.log()
    assert "Uvicorn running" not in service.log()


def test_allow_insecure_binds_a_public_address_with_a_warning(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "WORKER_METRICS_PORT": "0"}
    env["ALLOW_INSECURE"] = "true"
    service = ServiceProcess(env, ["serve", "--bind", f"0.0.0.0:{port}"], port=port)
    try:
        service.start(tmp_path, wait=False)
        line = _wait_for_line(service, WARNING, within=20)
    finally:
        service.stop()  # right after the warning: nothing stays exposed
    assert '"level":"warning"' in line
    assert "anyone who can reach it can change limits" in line


def test_no_warning_with_admin_token_or_on_loopback(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "WORKER_METRICS_PORT": "0"}
    port = free_port()
    public = ServiceProcess(
        {**env, "ADMIN_TOKEN": ADMIN}, ["serve", "--bind", f"0.0.0.0:{port}"], port=port
    )
    loopback = ServiceProcess(env)
    try:
        public.start(tmp_path)
        loopback.start(tmp_path)
    finally:
        public.stop()
        loopback.stop()
    for service in (public, loopback):
        assert "Uvicorn running" in service.log()
        assert "without ADMIN_TOKEN" not in service.log()
    assert ADMIN not in public.log()
