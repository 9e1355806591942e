"""The body rule of every route that takes one (docs/api.md, "Request bodies"): a body that
is empty or only whitespace is no body; anything else must be one JSON value.

Litestar treats an empty body as absent but tries to parse a whitespace-only one (and
fails with "malformed JSON"); this route middleware hands it an empty body instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send
    from litestar.types.asgi_types import HTTPRequestEvent

__all__ = ["blank_body_is_no_body"]

_WHITESPACE = b" \t\r\n"
_PEEK_LIMIT = 64 * 1024  # past this much whitespace, let the body through as it is


def blank_body_is_no_body(app: ASGIApp) -> ASGIApp:
    """Route middleware: a whitespace-only request body reaches the handler as empty."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        held: list[bytes] = []
        size = 0
        passing = False

        def request(body: bytes, more: bool) -> HTTPRequestEvent:
            return {"type": "http.request", "body": body, "more_body": more}

        async def peeking_receive() -> ReceiveMessage:
            nonlocal size, passing
            while not passing:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                chunk = message.get("body", b"")
                held.append(chunk)
                size += len(chunk)
                more = message.get("more_body", False)
                if chunk.strip(_WHITESPACE) or size > _PEEK_LIMIT:
                    passing = True  # a real body: replay what was held, then pass through
                    return request(b"".join(held), more)
                if not more:
                    passing = True
                    return request(b"", False)
            return await receive()

        await app(scope, peeking_receive, send)

    return middleware
