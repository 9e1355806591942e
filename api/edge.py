"""The outermost ASGI layer: what a web page on another site must not be able to do.

A browser lets any page send a "simple" cross-site request (``text/plain``, form bodies, or
a body with no type at all) without asking the server first, and lets a page whose name
resolves to 127.0.0.1 (DNS rebinding) talk to a loopback service as if it were its own.
This layer refuses, before anything else runs:

* an HTTP body that is not JSON (``Content-Type: application/json`` or ``…+json``): 415,
  so no cross-site form or ``text/plain`` POST is ever parsed;
* a ``Host`` outside ``ALLOWED_HOSTS`` (by default the loopback names when the server
  binds loopback): 400, so a rebound name cannot reach the API;
* a WebSocket upgrade whose ``Origin`` is neither the server's own nor in ``CORS_ORIGINS``:
  closed with 4403 before it is accepted.

It reads the request's headers once and nothing else; every other request passes through
untouched (the check path pays one loop over its headers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from schemas.http import ErrorResponse

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, Scope, Send

__all__ = ["WS_FORBIDDEN", "EdgeGuard", "host_name"]

#: The close code of a WebSocket refused for its Origin (4000 + 403).
WS_FORBIDDEN = 4403
_encode = msgspec.json.Encoder().encode
_UNSUPPORTED = _encode(
    ErrorResponse(
        "unsupported_media_type",
        "request bodies must be JSON: send 'Content-Type: application/json'",
    )
)
_BAD_HOST = _encode(
    ErrorResponse("invalid_host", "this server does not answer for that Host (ALLOWED_HOSTS)")
)


def host_name(host: str) -> str:
    """The name in a ``Host`` header value, without its port or IPv6 brackets, lowercased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


_JSON = b"application/json"


def _is_json(content_type: bytes) -> bool:
    if content_type == _JSON:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


class EdgeGuard:
    """ASGI: refuse non-JSON bodies, unknown Hosts and cross-site WebSockets (see module)."""

    __slots__ = ("_good_hosts", "_hosts", "_origins", "app")

    def __init__(
        self, app: ASGIApp, *, hosts: frozenset[str] | None, origins: frozenset[str]
    ) -> None:
        self.app = app
        self._hosts = hosts  # None: any Host
        self._origins = origins
        self._good_hosts: set[bytes] = set()  # Host values seen allowed (a few at most)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind: str = scope["type"]
        if kind == "http":
            # One pass over the headers comparing names only: the check path's cost here.
            host = content_type = length = chunked = None
            for name, value in scope["headers"]:
                if name == b"content-length":
                    length = value
                elif name == b"content-type":
                    content_type = value
                elif name == b"host":
                    host = value
                elif name == b"transfer-encoding":
                    chunked = value
            if host is not None and host not in self._good_hosts and not self._host_allowed(host):
                await _answer(send, 400, _BAD_HOST)
                return
            body = chunked is not None or (length is not None and length.strip() not in (b"0", b""))
            if body and (content_type is None or not _is_json(content_type)):
                await _answer(send, 415, _UNSUPPORTED)
                return
        elif kind == "websocket" and not self._websocket_allowed(scope):
            await send({"type": "websocket.close", "code": WS_FORBIDDEN, "reason": ""})
            return
        await self.app(scope, receive, send)

    def _host_allowed(self, host: bytes) -> bool:
        allowed = self._hosts is None or host_name(host.decode("latin-1")) in self._hosts
        if allowed and len(self._good_hosts) < 64:  # remembered: next time a set lookup
            self._good_hosts.add(host)
        return allowed

    def _websocket_allowed(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        host = headers.get(b"host")
        if host is not None and not self._host_allowed(host):
            return False
        origin = headers.get(b"origin")
        if origin is None:
            return True  # not a browser: the bearer token or ticket decides
        text = origin.decode("latin-1").strip().lower()
        if text in self._origins:
            return True
        # The server's own pages (same origin): the Origin's host:port is the Host.
        try:
            netloc = urlsplit(text).netloc
        except ValueError:
            return False
        return host is not None and netloc == host.decode("latin-1").strip().lower()


async def _answer(send: Send, status: int, body: bytes) -> None:
    start: Any = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})
