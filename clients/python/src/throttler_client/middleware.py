"""``ThrottlerMiddleware``: rate-limit every request of an ASGI app (Litestar, Starlette,
FastAPI, or any other), with no framework import.

For each HTTP request or WebSocket handshake it asks ``key(scope)`` which key to charge
(``None`` lets the request through untouched) and ``cost`` how many tokens, then checks:

* allowed: the app answers, and the rate-limit headers are added to its answer (to the
  accept message of a WebSocket);
* denied: ``429`` JSON ``{"error": "rate_limit_exceeded", "message", "retry_after_ms"}`` with
  ``Retry-After`` and the rate-limit headers, without calling the app. A WebSocket is
  refused at the handshake: with that same 429 where the server supports the ASGI
  ``websocket.http.response`` extension, else closed with code 1008 before it is accepted;
* the service cannot decide (and the client's ``failure_policy`` is ``"closed"``): ``503``
  ``{"error": "rate_limiter_unavailable"}`` with ``Retry-After: 1``. With ``"open"`` the
  request goes through, marked ``X-RateLimit-Enforced: false``;
* ``key`` gave a key the service refuses: ``400`` ``{"error": "invalid_key"}``.

Other errors (a wrong token, a cost above the limit's capacity) are configuration mistakes
and propagate to the framework.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from throttler_client.errors import InvalidKeyError, ThrottlerUnavailableError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from throttler_client.async_client import AsyncThrottlerClient
    from throttler_client.models import Decision

__all__ = ["Cost", "KeyFunc", "Refusal", "ThrottlerMiddleware", "client_ip", "decide"]

# ASGI's scope and messages, typed loosely on purpose: each framework has its own static
# types for them (Litestar's TypedDicts, Starlette's mappings), and a key function written
# against either must fit.
Scope = Any
Message = Any
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Which key a request is charged to; ``None`` exempts it.
KeyFunc = Callable[[Scope], str | None]
#: Tokens a request costs: a number, or a function of the request's scope.
Cost = int | Callable[[Scope], int]


def client_ip(scope: Scope) -> str | None:
    """``ip:<address>`` of the connecting client (behind a proxy: the proxy's, unless the
    server rewrites it from ``X-Forwarded-For``); None when the server does not say."""
    client = scope.get("client")
    return f"ip:{client[0]}" if client else None


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer that replaces the app's: status, JSON body, headers."""

    status: int
    body: dict[str, object]
    headers: Mapping[str, str] = field(default_factory=dict)


async def decide(
    client: AsyncThrottlerClient, scope: Scope, key: KeyFunc, cost: Cost
) -> Decision | Refusal | None:
    """Check the request of ``scope``: None when exempt, the Decision when allowed, else the
    Refusal to answer with."""
    name = key(scope)
    if name is None:
        return None
    tokens = cost(scope) if callable(cost) else cost
    try:
        decision = await client.check(name, tokens)
    except InvalidKeyError as exc:
        return Refusal(400, {"error": "invalid_key", "message": exc.message})
    except ThrottlerUnavailableError:
        message = "the rate limiter cannot be reached; retry shortly"
        body: dict[str, object] = {"error": "rate_limiter_unavailable", "message": message}
        return Refusal(503, body, {"retry-after": "1"})
    if decision.allowed:
        return decision
    body = {
        "error": "rate_limit_exceeded",
        "message": f"rate limit exceeded; retry after {decision.retry_after_ms} ms",
        "retry_after_ms": decision.retry_after_ms,
    }
    return Refusal(429, body, decision.headers)


def _encode(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    ]


class ThrottlerMiddleware:
    """Pure ASGI middleware; see the module documentation for what it answers.

    Litestar: ``DefineMiddleware(ThrottlerMiddleware, client=..., key=...)``; Starlette and
    FastAPI: ``app.add_middleware(ThrottlerMiddleware, client=..., key=...)``. On a single
    route: Litestar's and Starlette's route-level ``middleware=[...]``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: AsyncThrottlerClient,
        key: KeyFunc = client_ip,
        cost: Cost = 1,
    ) -> None:
        self.app = app
        self.client = client
        self.key = key
        self.cost = cost

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        outcome = await decide(self.client, scope, self.key, self.cost)
        if outcome is None:
            await self.app(scope, receive, send)
        elif isinstance(outcome, Refusal):
            await _refuse(scope, receive, send, outcome)
        else:
            await self.app(scope, receive, _adding_headers(send, outcome.headers))


def _adding_headers(send: Send, headers: Mapping[str, str]) -> Send:
    """``send`` that adds ``headers`` to the answer's start (those the app did not set)."""
    extra = _encode(headers)

    async def wrapped(message: Message) -> None:
        if message["type"] in ("http.response.start", "websocket.accept") and extra:
            own = list(message.get("headers") or [])
            present = {name.lower() for name, _ in own}
            message = {**message, "headers": own + [h for h in extra if h[0] not in present]}
        await send(message)

    return wrapped


async def _refuse(scope: Scope, receive: Receive, send: Send, refusal: Refusal) -> None:
    body = json.dumps(refusal.body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *_encode(refusal.headers),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()  # the websocket.connect message, before answering the handshake
    if "websocket.http.response" in (scope.get("extensions") or {}):
        start = {"type": "websocket.http.response.start", "status": refusal.status}
        await send({**start, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        reason = str(refusal.body["message"])[:120]
        await send({"type": "websocket.close", "code": 1008, "reason": reason})
