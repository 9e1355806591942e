"""What a web page on another site cannot make a loopback Throttler do (api.edge), against a
real ``throttler serve``: a body that is not JSON is a 415 and is never parsed, a Host
outside ALLOWED_HOSTS (DNS rebinding) is refused, and a WebSocket from a foreign Origin is
closed before it is accepted."""

from __future__ import annotations

import socket
import time
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

LIMIT = b'{"requests": 1, "window_ms": 60000}'


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        "WORKER_METRICS_PORT": "0",
        "WORKER_BLOCK_MS": "100",
        "CORS_ORIGINS": "https://dash.example",
    }
    proc = ServiceProcess(env).start(tmp_path_factory.mktemp("edge"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def http(service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.base_url, timeout=10) as client:
        yield client


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_a_cross_site_simple_post_creates_nothing(
    http: httpx.Client, content_type: str | None
) -> None:
    key = f"xsite-{uuid.uuid4().hex[:8]}"
    headers = {"Content-Type": content_type} if content_type else {}
    resp = http.post(f"/rate-limit/{key}", content=LIMIT, headers=headers)
    assert resp.status_code == 415, resp.text
    assert resp.json()["error"] == "unsupported_media_type"
    assert http.get(f"/rate-limit/{key}").json()["source"] == "default"  # nothing was set
    check = http.post(f"/rate-limit/{key}/check", content=b'{"tokens": 1}', headers=headers)
    assert check.status_code == 415


def test_json_bodies_pass(http: httpx.Client) -> None:
    key = f"json-{uuid.uuid4().hex[:8]}"
    for content_type in ("application/json", "application/json; charset=utf-8"):
        headers = {"Content-Type": content_type}
        resp = http.post(f"/rate-limit/{key}/check", content=b'{"tokens": 0}', headers=headers)
        assert resp.status_code == 200, resp.text
    assert http.post(f"/rate-limit/{key}/check").status_code == 200  # no body needs no type


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "10.0.0.1", "[fe80::1]"])
def test_a_foreign_host_is_refused(http: httpx.Client, host: str) -> None:
    resp = http.post("/rate-limit/rebound", json={"requests": 1, "window_ms": 60000},
                     headers={"Host": host})  # fmt: skip
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "invalid_host"
    assert http.get("/health", headers={"Host": host}).status_code == 400


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "LOCALHOST"])
def test_loopback_names_are_answered(
    http: httpx.Client, service: ServiceProcess, host: str
) -> None:
    assert http.get("/health", headers={"Host": f"{host}:{service.port}"}).status_code == 200


def upgrade(service: ServiceProcess, origin: str | None, query: str = "") -> bytes:
    """A WebSocket handshake for /notifications/ws; the status line of the answer."""
    lines = [
        f"GET /notifications/ws{query} HTTP/1.1",
        f"Host: 127.0.0.1:{service.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


def test_a_websocket_from_a_foreign_origin_is_refused(service: ServiceProcess) -> None:
    assert b" 403 " in upgrade(service, "https://evil.example")
    assert b" 403 " in upgrade(service, "null")


@pytest.mark.parametrize(
    "origin", [None, "https://dash.example", "http://127.0.0.1:{port}"], ids=["none", "cors", "own"]
)
def test_a_websocket_from_an_allowed_origin_is_accepted(
    service: ServiceProcess, origin: str | None
) -> None:
    given = None if origin is None else origin.format(port=service.port)
    assert b" 101 " in upgrade(service, given)


def test_allowed_hosts_names_the_hosts(redis_url: str, prefix: str, tmp_path: Path) -> None:
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "WORKER_METRICS_PORT": "0"}
    env["ALLOWED_HOSTS"] = "throttler.internal, 127.0.0.1"
    proc = ServiceProcess(env).start(tmp_path)
    try:
        with httpx.Client(base_url=proc.base_url, timeout=10) as http:
            assert http.get("/health", headers={"Host": "throttler.internal"}).status_code == 200
            assert http.get("/health", headers={"Host": "localhost"}).status_code == 400
    finally:
        proc.stop()


def test_the_websocket_access_line_has_no_query_string(service: ServiceProcess) -> None:
    secret = uuid.uuid4().hex
    assert b" 101 " in upgrade(service, None, f"?prefix=p-{secret}&ticket=t-{secret}")
    deadline = time.monotonic() + 20
    while "WebSocket /notifications/ws accepted" not in service.log():
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.05)
    assert secret not in service.log()
    assert "[accepted]" not in service.log()  # uvicorn's own line is gone
