"""Bearer-token guards. ``ADMIN_TOKEN`` guards limit CRUD, dead letters and notifications;
``CHECK_TOKEN`` (optional) guards checks. Tokens are compared in constant time."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from litestar.exceptions import NotAuthorizedException

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from api.services import Services

__all__ = ["admin_guard", "check_guard"]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="throttler"'}


def _require(connection: ASGIConnection[Any, Any, Any, Any], token: str | None) -> None:
    if token is None:
        return
    header = connection.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise NotAuthorizedException(
            "missing bearer token: send 'Authorization: Bearer <token>'", headers=_CHALLENGE
        )
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise NotAuthorizedException(
            "invalid bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="throttler", error="invalid_token"'},
        )


def _services(connection: ASGIConnection[Any, Any, Any, Any]) -> Services:
    services: Services = connection.app.state.services
    return services


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    _require(connection, _services(connection).settings.admin_token)


def check_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    _require(connection, _services(connection).settings.check_token)
