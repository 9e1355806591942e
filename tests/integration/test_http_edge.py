"""Protocol limits at the HTTP edge (throttler/http_protocol.py), against a real
``throttler serve`` over raw sockets: oversized and unfinished heads, too many headers,
heads and bodies that trickle, idle connections, keep-alive, and the connection cap."""

from __future__ import annotations

import contextlib
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

#: Short timeouts, so that the tests see them fire; deadlines below are generous.
EDGE = {
    "MAX_HEADER_BYTES": "8192",
    "MAX_HEADERS": "50",
    "HTTP_HEADER_TIMEOUT_MS": "1000",
    "HTTP_BODY_TIMEOUT_MS": "1000",
    "HTTP_KEEPALIVE_MS": "1000",
}
WITHIN = 20.0  # seconds: far beyond the 1 s timeouts plus the 1 s sweep


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        "WORKER_METRICS_PORT": "0",
        **EDGE,
    }
    proc = ServiceProcess(env).start(tmp_path_factory.mktemp("http-edge"))
    try:
        yield proc
    finally:
        proc.stop()


def connect(service: ServiceProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=WITHIN)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by WITHIN)."""
    got = b""
    deadline = time.monotonic() + WITHIN
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    else:
        raise AssertionError(f"the server kept the connection open; got {got[:200]!r}")
    return got


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send, ignoring a reset: the server may have closed already (that is the point)."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def test_a_large_header_is_431(service: ServiceProcess) -> None:
    with connect(service) as sock:
        send_quietly(sock, HEAD + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b"request_header_fields_too_large" in reply


def test_an_unfinished_huge_head_is_cut_off(service: ServiceProcess) -> None:
    """The head never ends: the server answers once the cap is passed, not at the end."""
    with connect(service) as sock:
        send_quietly(sock, HEAD + b"X-Endless: ")
        for _ in range(64):  # up to 1 MiB, stopping as soon as the server has closed
            send_quietly(sock, b"a" * 16384)
            sock.settimeout(0.01)
            try:
                if sock.recv(65536, socket.MSG_PEEK):
                    break
            except TimeoutError:
                pass
        sock.settimeout(WITHIN)
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]


def test_too_many_headers_is_431(service: ServiceProcess) -> None:
    lines = b"".join(b"X-H%d: 1\r\n" % i for i in range(60))
    with connect(service) as sock:
        send_quietly(sock, HEAD + lines + b"\r\n")
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]


def test_a_trickled_head_times_out_with_408(service: ServiceProcess) -> None:
    with connect(service) as sock:
        sock.sendall(HEAD)  # and the rest never comes
        started = time.monotonic()
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert time.monotonic() - started < WITHIN


def test_an_idle_new_connection_is_closed(service: ServiceProcess) -> None:
    with connect(service) as sock:
        read_all(sock)  # returns once the server closes it


def test_a_late_body_closes_the_connection(service: ServiceProcess) -> None:
    head = (
        b"POST /rate-limit/late/check HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    with connect(service) as sock:
        sock.sendall(head + b'{"tokens":')  # 10 of the 100 bytes, then nothing
        reply = read_all(sock)
    assert not reply.startswith(b"HTTP/1.1 200"), reply[:200]


def test_an_idle_keep_alive_connection_is_closed(service: ServiceProcess) -> None:
    with connect(service) as sock:
        sock.sendall(HEAD + b"\r\n")
        reply = read_all(sock)  # the answer, then the close after HTTP_KEEPALIVE_MS
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]


def test_normal_requests_still_pass(service: ServiceProcess) -> None:
    with httpx.Client(base_url=service.base_url, timeout=10) as http:
        for _ in range(3):  # on one kept-alive connection
            resp = http.post("/rate-limit/fine/check", json={"tokens": 1})
            assert resp.status_code == 200, resp.text


def test_beyond_max_connections_answers_503(redis_url: str, prefix: str, tmp_path: Path) -> None:
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "WORKER_METRICS_PORT": "0"}
    env["MAX_CONNECTIONS"] = "4"
    proc = ServiceProcess(env).start(tmp_path)
    held: list[socket.socket] = []
    try:
        # Connections that stay open (the head timeout is 10 s by default).
        held.extend(connect(proc) for _ in range(4))
        with connect(proc) as sock:
            sock.sendall(HEAD + b"Connection: close\r\n\r\n")
            reply = read_all(sock)
        assert reply.startswith(b"HTTP/1.1 503 "), reply[:200]
    finally:
        for sock in held:
            sock.close()
        proc.stop()
