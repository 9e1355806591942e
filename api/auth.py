"""Bearer-token guards. ``ADMIN_TOKEN`` guards limit CRUD, dead letters and notifications
(which also take a notification ticket, see api.tickets); ``CHECK_TOKEN`` (optional) guards
checks. Tokens are compared in constant time."""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any, NoReturn

from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, WebSocketException

from api.tickets import ticket_is_valid

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from api.services import Services

__all__ = [
    "WS_UNAUTHORIZED",
    "admin_guard",
    "bearer_refusal",
    "check_guard",
    "notification_guard",
]

_CHALLENGE = 'Bearer realm="throttler"'
_INVALID = 'Bearer realm="throttler", error="invalid_token"'
_MISSING = "missing bearer token: send 'Authorization: Bearer <token>'"
_WRONG = "invalid bearer token"
#: The close code of a refused WebSocket: 4000 + the HTTP status, as is customary.
WS_UNAUTHORIZED = 4401


def _refuse(
    connection: ASGIConnection[Any, Any, Any, Any], message: str, challenge: str
) -> NoReturn:
    if connection.scope["type"] == ScopeType.WEBSOCKET:
        # (Any other exception would close the socket with 4500, "internal error".)
        raise WebSocketException(detail=message, code=WS_UNAUTHORIZED)
    raise NotAuthorizedException(message, headers={"WWW-Authenticate": challenge})


def bearer_refusal(header: str, token: str | None) -> tuple[str, str] | None:
    """Why ``Authorization: <header>`` does not present ``token``: (message, the
    ``WWW-Authenticate`` challenge), or None when it does (or no token is required)."""
    if token is None:
        return None
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return _MISSING, _CHALLENGE
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return _WRONG, _INVALID
    return None


def _require(connection: ASGIConnection[Any, Any, Any, Any], token: str | None) -> None:
    refusal = bearer_refusal(connection.headers.get("authorization", ""), token)
    if refusal is not None:
        _refuse(connection, *refusal)


def _services(connection: ASGIConnection[Any, Any, Any, Any]) -> Services:
    services: Services = connection.app.state.services
    return services


# Guards are coroutines: Litestar would run a plain function in a worker thread, a
# thread hop on every request.
async def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    _require(connection, _services(connection).settings.admin_token)


async def check_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    _require(connection, _services(connection).settings.check_token)


async def notification_guard(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """The admin token, or a valid notification ticket in ``?ticket=`` (for browsers).

    Every credential presented must be valid: a wrong token is refused even beside a good
    ticket, and a bad ticket even beside a good token.
    """
    token = _services(connection).settings.admin_token
    if token is None:
        return
    ticket = connection.query_params.get("ticket")
    if ticket is not None and not ticket_is_valid(token, ticket, time.time_ns() // 1_000_000):
        _refuse(connection, "invalid or expired notification ticket", _INVALID)
    if ticket is None or "authorization" in connection.headers:
        _require(connection, token)
