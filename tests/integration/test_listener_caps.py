"""Notification streams (SSE and WebSocket) are capped per process (MAX_LISTENERS) and per
client address (MAX_LISTENERS_PER_CLIENT), against a real `throttler serve`; a closed
stream gives its slot back."""

from __future__ import annotations

import socket
import time
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import Iterator

WITHIN = 20.0


@pytest.fixture
def service(
    redis_url: str, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "WORKER_METRICS_PORT": "0",
        "MAX_LISTENERS": "3",
        "MAX_LISTENERS_PER_CLIENT": "2",
    }
    proc = ServiceProcess(env).start(tmp_path_factory.mktemp(f"listeners-{uuid.uuid4().hex[:6]}"))
    try:
        yield proc
    finally:
        proc.stop()


def open_stream(
    service: ServiceProcess, source: str, *, websocket: bool = False
) -> tuple[socket.socket, bytes]:
    """A notification stream from ``source``: the socket (left open) and the answer's head."""
    sock = socket.create_connection(
        ("127.0.0.1", service.port), timeout=WITHIN, source_address=(source, 0)
    )
    if websocket:
        head = (
            "GET /notifications/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
    else:
        head = "GET /notifications HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    sock.sendall(head.encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    head_end = reply.find(b"\r\n\r\n") + 4
    length = next(
        (int(line.split(b":")[1]) for line in reply[:head_end].lower().split(b"\r\n")
         if line.startswith(b"content-length:")),
        0,
    )  # fmt: skip
    while len(reply) - head_end < length:  # an error answer: its whole JSON body
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return sock, reply


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_streams_are_capped_per_address_and_per_process(service: ServiceProcess) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(2):
            sock, reply = open_stream(service, "127.0.0.1")
            held.append(sock)
            assert status(reply) == 200, reply
        sock, reply = open_stream(service, "127.0.0.1")  # a third from one address
        sock.close()
        assert status(reply) == 429, reply
        assert b"too_many_listeners" in reply
        sock, reply = open_stream(service, "127.0.0.1", websocket=True)  # WebSockets count
        sock.close()
        assert status(reply) == 403, reply
        sock, reply = open_stream(service, "127.0.0.2")  # another address: the third stream
        held.append(sock)
        assert status(reply) == 200, reply
        sock, reply = open_stream(service, "127.0.0.3")  # a fourth: over the process cap
        sock.close()
        assert status(reply) == 429, reply
        # A closed stream gives its slot back.
        held.pop(0).close()
        deadline = time.monotonic() + WITHIN
        while True:
            sock, reply = open_stream(service, "127.0.0.1")
            if status(reply) == 200:
                held.append(sock)
                break
            sock.close()
            assert time.monotonic() < deadline, reply
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
