"""Bearer-token guards. ``ADMIN_TOKEN`` guards limit CRUD, dead letters and notifications
(which also take a notification ticket, see api.tickets); ``CHECK_TOKEN`` (optional) guards
checks. Tokens are compared in constant time. Wrong credentials count against the client's
address, and config changes spend from its MUTATIONS (api.throttle)."""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any, NoReturn

from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, WebSocketException

from api.throttle import Throttled, client_address
from api.tickets import ticket_is_valid

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from api.services import Services

__all__ = [
    "WRONG_TOKEN",
    "WS_THROTTLED",
    "WS_UNAUTHORIZED",
    "admin_guard",
    "bearer_refusal",
    "check_guard",
    "notification_guard",
    "throttled_message",
]

_CHALLENGE = 'Bearer realm="throttler"'
_INVALID = 'Bearer realm="throttler", error="invalid_token"'
_MISSING = "missing bearer token: send 'Authorization: Bearer <token>'"
_WRONG = WRONG_TOKEN = "invalid bearer token"  # noqa: S105 - a message, not a secret
#: The close code of a refused WebSocket: 4000 + the HTTP status, as is customary.
WS_UNAUTHORIZED = 4401
WS_THROTTLED = 4429
_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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


def throttled_message(wait_ms: int) -> str:
    return (
        "too many failed authentication attempts from this address (AUTH_FAILURES per "
        f"AUTH_FAILURE_WINDOW_MS); retry after {wait_ms} ms"
    )


def _throttled(connection: ASGIConnection[Any, Any, Any, Any], wait_ms: int) -> NoReturn:
    message = throttled_message(wait_ms)
    if connection.scope["type"] == ScopeType.WEBSOCKET:
        raise WebSocketException(detail=message, code=WS_THROTTLED)
    raise Throttled("too_many_auth_failures", message, wait_ms)


async def _refuse_counted(
    connection: ASGIConnection[Any, Any, Any, Any], message: str, challenge: str
) -> NoReturn:
    """Refuse a credential that was presented and is wrong, counting it against the
    client's address (a missing one reveals nothing and is not counted)."""
    wait = await _services(connection).auth_failures.spend(client_address(connection.scope))
    if wait is not None:
        _throttled(connection, wait)
    _refuse(connection, message, challenge)


def _not_locked(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    wait = _services(connection).auth_failures.locked(client_address(connection.scope))
    if wait is not None:
        _throttled(connection, wait)


async def _require(connection: ASGIConnection[Any, Any, Any, Any], token: str | None) -> None:
    if token is None:
        return
    _not_locked(connection)
    refusal = bearer_refusal(connection.headers.get("authorization", ""), token)
    if refusal is None:
        return
    if refusal[0] == _WRONG:
        await _refuse_counted(connection, *refusal)
    _refuse(connection, *refusal)


def _services(connection: ASGIConnection[Any, Any, Any, Any]) -> Services:
    services: Services = connection.app.state.services
    return services


# Guards are coroutines: Litestar would run a plain function in a worker thread, a
# thread hop on every request.
async def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """ADMIN_TOKEN; and a change (POST, PUT, DELETE) spends from the client's MUTATIONS."""
    services = _services(connection)
    await _require(connection, services.settings.admin_token)
    if connection.scope["type"] == ScopeType.HTTP and connection.scope["method"] in _CHANGES:
        wait = await services.mutation_limit.spend(client_address(connection.scope))
        if wait is not None:
            raise Throttled(
                "too_many_changes",
                "too many config changes from this address (MUTATIONS per "
                f"MUTATION_WINDOW_MS); retry after {wait} ms",
                wait,
            )


async def check_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    await _require(connection, _services(connection).settings.check_token)


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
    _not_locked(connection)
    ticket = connection.query_params.get("ticket")
    if ticket is not None and not ticket_is_valid(token, ticket, time.time_ns() // 1_000_000):
        await _refuse_counted(connection, "invalid or expired notification ticket", _INVALID)
    if ticket is None or "authorization" in connection.headers:
        await _require(connection, token)
