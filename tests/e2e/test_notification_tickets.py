"""A web page reaches the notifications without the admin token in a URL: a short-lived
signed ticket from `POST /notifications/ticket`, accepted as `?ticket=` on the SSE and
WebSocket routes only, never logged; and `CORS_ORIGINS` lets a page on another origin in."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import httpx
import pytest
from websockets.sync.client import connect

from api.tickets import TICKET_TTL_MS, issue_ticket
from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

TOKEN = "admin-secret-token-0123456789abcdef01234"
PAGE = "https://dashboard.example"


@pytest.fixture
def service(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "WORKER_METRICS_PORT": "0",
        "ADMIN_TOKEN": TOKEN,
        "CORS_ORIGINS": f"{PAGE}, https://other.example",
        "LOG_LEVEL": "debug",
    }
    proc = ServiceProcess(env).start(tmp_path)
    try:
        yield proc
    finally:
        proc.stop()


def test_a_ticket_opens_the_notification_routes_and_nothing_else(service: ServiceProcess) -> None:
    with httpx.Client(base_url=service.base_url, timeout=10) as api:
        assert api.post("/notifications/ticket").status_code == 401  # the backend's token...
        answer = api.post("/notifications/ticket", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["expires_in_ms"] == TICKET_TTL_MS
        ticket = body["ticket"]
        assert TOKEN not in ticket

        # ...gives the page a ticket for an EventSource...
        with api.stream("GET", "/notifications", params={"ticket": ticket}) as stream:
            assert stream.status_code == 200
            assert next(stream.iter_lines()) == "event: subscribed"
        # ...and a WebSocket...
        ws_url = service.base_url.replace("http://", "ws://") + f"/notifications/ws?ticket={ticket}"
        with connect(ws_url) as socket:
            assert json.loads(socket.recv(timeout=10)) == {"type": "subscribed", "prefix": ""}
        # ...and nothing else; every credential presented must be right.
        wrong = {"Authorization": "Bearer wrong-token"}
        assert (
            api.get("/notifications", params={"ticket": ticket}, headers=wrong).status_code == 401
        )
        assert api.get("/dead-letters", params={"ticket": ticket}).status_code == 401
        assert api.get("/rate-limit/k", params={"ticket": ticket}).status_code == 401

        expired = issue_ticket(TOKEN, time.time_ns() // 1_000_000 - 2 * TICKET_TTL_MS)
        forged = issue_ticket("another-token", time.time_ns() // 1_000_000)
        for bad in (expired, forged, ticket[:-2] + "xx", "t1.9999999999999.x.y", "nonsense"):
            refused = api.get("/notifications", params={"ticket": bad})
            assert refused.status_code == 401, bad
            assert refused.json()["message"] == "invalid or expired notification ticket"
    assert ticket not in service.log()  # never logged, even at debug
    assert "/notifications" in service.log()  # (the requests were logged)


def test_cors_origins_let_a_listed_page_in(service: ServiceProcess) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    with httpx.Client(base_url=service.base_url, timeout=10) as api:
        allowed = api.options("/notifications/ticket", headers={"Origin": PAGE, **preflight})
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == PAGE
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        check = api.post("/rate-limit/k/check", headers={"Origin": PAGE})
        assert check.headers["access-control-allow-origin"] == PAGE
        assert "X-RateLimit-Remaining" in check.headers["access-control-expose-headers"]
        other = api.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
