"""Draining before a stop: the process's shutdown state, and what it changes for HTTP.

A server process that gets SIGTERM first *drains*: it keeps accepting and answering for
``SHUTDOWN_DRAIN_MS`` while load balancers notice that it is leaving, and only then stops
listening (``throttler.server``). :class:`Drain` is that state, shared by the server and the
app: the server begins it; the app reacts — ``GET /ready`` answers 503 at once
(:class:`DrainGate`), and open notification streams end (``api.notifications``). The server
itself marks every answer during the drain ``Connection: close``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from litestar.enums import ScopeType

from schemas.http import ErrorResponse

if TYPE_CHECKING:
    from collections.abc import Callable

    from litestar.types import (
        ASGIApp,
        HTTPResponseBodyEvent,
        HTTPResponseStartEvent,
        Receive,
        Scope,
        Send,
    )

__all__ = ["SHUTTING_DOWN", "Drain", "DrainGate"]

#: The body of ``/ready`` (and of new notification streams) while draining.
SHUTTING_DOWN = ErrorResponse(
    "shutting_down", "this instance is shutting down; send requests to another one"
)
_BODY = msgspec.json.encode(SHUTTING_DOWN)
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
]


class Drain:
    """Set once, when the process begins to shut down; never cleared."""

    def __init__(self) -> None:
        self.draining = False
        self._then: list[Callable[[], None]] = []

    def on_begin(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the drain begins (at once if it has)."""
        if self.draining:
            callback()
        else:
            self._then.append(callback)

    def begin(self) -> None:
        """Start draining; run in the event loop's thread (callbacks touch its objects)."""
        if self.draining:
            return
        self.draining = True
        for callback in self._then:
            callback()


class DrainGate:
    """ASGI wrapper: ``GET /ready`` answers 503 ``shutting_down`` while draining.

    The server wraps whatever app it serves with this, so the answer does not depend on
    which handler (Litestar's router or anything in front of it) would serve ``/ready``.
    """

    def __init__(self, app: ASGIApp, drain: Drain, path: str = "/ready") -> None:
        self.app = app
        self.drain = drain
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.drain.draining and scope["type"] == ScopeType.HTTP and scope["path"] == self.path:
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": 503,
                "headers": _HEADERS,
            }
            body: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": _BODY,
                "more_body": False,
            }
            await send(start)
            await send(body)
            return
        await self.app(scope, receive, send)
