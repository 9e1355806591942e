"""uvicorn's httptools protocol with the limits it lacks at the HTTP edge.

uvicorn's httptools parser buffers a request head of any size (a 32 MiB header was
accepted), and only an idle keep-alive connection times out: a new connection that sends
nothing, or a head or body trickled a byte at a time, stays open for ever. h11 (uvicorn's
other parser) caps the head size but cost a quarter of each check (docs/performance.md), so
this subclass adds to httptools, per connection:

* ``MAX_HEADER_BYTES``: the request line and headers together; more is a 431 and the
  connection closes (counted as bytes arrive, so an unfinished head is cut off too);
* ``MAX_HEADERS``: header lines per request; more is a 431;
* ``HTTP_HEADER_TIMEOUT_MS``: from a connection's first moment (or a request's first
  byte) to the end of its head; then a 408 and the connection closes;
* ``HTTP_BODY_TIMEOUT_MS``: from the end of the head to the end of the body; then the
  connection closes (the application sees a disconnect).

Deadlines are checked by one sweep a second over the open connections, so a request pays
two float assignments, not a timer. ``HTTP_KEEPALIVE_MS`` (uvicorn's ``timeout_keep_alive``)
and ``MAX_CONNECTIONS`` (``limit_concurrency``: 503 beyond it) are uvicorn's own.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    import asyncio

    from core.settings import Settings

__all__ = ["EdgeLimits", "GuardedHttpToolsProtocol", "guarded_protocol"]

_log = logging.getLogger("throttler.http")

_SWEEP_S = 1.0


class EdgeLimits:
    """The limits, in the units the protocol uses (bytes, count, seconds)."""

    __slots__ = ("body_timeout", "head_timeout", "max_head_bytes", "max_headers")

    def __init__(
        self, max_head_bytes: int, max_headers: int, head_timeout: float, body_timeout: float
    ) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout

    @classmethod
    def of(cls, settings: Settings) -> EdgeLimits:
        return cls(
            settings.max_header_bytes,
            settings.max_headers,
            settings.http_header_timeout_ms / 1000,
            settings.http_body_timeout_ms / 1000,
        )


def _response(status: bytes, code: str, message: str) -> bytes:
    body = json.dumps({"error": code, "message": message}).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


_TOO_LARGE = _response(
    b"431 Request Header Fields Too Large",
    "request_header_fields_too_large",
    "the request line and headers are too large (MAX_HEADER_BYTES, MAX_HEADERS)",
)
_TIMEOUT = _response(
    b"408 Request Timeout",
    "request_timeout",
    "the request head did not arrive in time (HTTP_HEADER_TIMEOUT_MS)",
)


class _HeadTooLargeError(Exception):
    """Raised from a parser callback: the parser stops, data_received answers 431."""


class _Sweeper:
    """Once a second: close the connections whose deadline has passed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        self.loop = loop
        self.connections = connections
        loop.call_later(_SWEEP_S, self.sweep)

    def sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            deadline = getattr(conn, "_deadline", 0.0)
            if 0.0 < deadline < now:
                conn.expire()
        self.loop.call_later(_SWEEP_S, self.sweep)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with :attr:`limits` enforced (see the module)."""

    limits: ClassVar[EdgeLimits]
    _sweepers: ClassVar[dict[int, _Sweeper]] = {}  # one per event loop

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0  # bytes received since the head began (unparsed ones too)
        self._header_bytes = 0  # bytes of the parsed request line and headers
        self._header_count = 0
        self._in_head = True
        self._too_large = False
        self._deadline = self.loop.time() + self.limits.head_timeout
        if id(self.loop) not in self._sweepers:
            self._sweepers[id(self.loop)] = _Sweeper(self.loop, self.connections)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if self._deadline == 0.0:  # the first byte of a request on a kept-alive one
                self._deadline = self.loop.time() + self.limits.head_timeout
            self._head_bytes += len(data)
        super().data_received(data)
        # A head still unfinished past the cap (the parser would keep buffering it),
        # or one the callbacks found too large.
        if self._too_large or (self._in_head and self._head_bytes > self.limits.max_head_bytes):
            self._refuse(_TOO_LARGE, "request head too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_count = 0
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_head_bytes:
            self._too_large = True
            raise _HeadTooLargeError

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if (
            self._header_count > self.limits.max_headers
            or self._header_bytes + len(self.url) > self.limits.max_head_bytes
        ):
            self._too_large = True
            raise _HeadTooLargeError
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        # Until the body has arrived (on_message_complete right after, when none comes).
        self._deadline = self.loop.time() + self.limits.body_timeout
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._deadline = 0.0
        self._in_head = True
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._deadline = 0.0
        self._in_head = False
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = 0.0
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        if self._too_large:  # the parser stopped on _HeadTooLargeError: answered in data_received
            return
        super().send_400_response(msg)

    def expire(self) -> None:
        """The sweep found this connection past its deadline."""
        if self.transport.is_closing():
            self._deadline = 0.0
        elif self._in_head:
            self._refuse(_TIMEOUT, "request head not received in time", quiet=True)
        else:
            _log.info("closing a connection whose request body is late (%s)", self.client)
            self._deadline = 0.0
            self.transport.close()

    def _refuse(self, answer: bytes, why: str, *, quiet: bool = False) -> None:
        self._deadline = 0.0
        self._in_head = False
        if self.transport.is_closing():
            return
        if not quiet:
            _log.warning("%s from %s: closing the connection", why, self.client)
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(answer)
        self.transport.close()


def guarded_protocol(limits: EdgeLimits) -> type[HttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` that enforces ``limits``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})
