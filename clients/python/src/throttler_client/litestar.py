"""A Litestar guard for routes that need their own key or cost (needs ``litestar``).

::

    from throttler_client.litestar import throttle_guard

    @post("/search", guards=[throttle_guard(throttler, key=by_user, cost=5)])
    async def search() -> ...: ...

It checks like ``ThrottlerMiddleware`` and raises Litestar's own exceptions, so the app's
exception handlers write the answer: ``TooManyRequestsException`` (429, with
``Retry-After`` and the rate-limit headers), ``ServiceUnavailableException`` (503) when the
service cannot decide under ``failure_policy="closed"``, ``ValidationException`` (400) for a
key the service refuses. A guard cannot add headers to an allowed answer: use the
middleware where every answer should carry them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar.exceptions import (
    HTTPException,
    ServiceUnavailableException,
    TooManyRequestsException,
    ValidationException,
)

from throttler_client.middleware import Refusal, client_ip, decide

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from throttler_client.async_client import AsyncThrottlerClient
    from throttler_client.middleware import Cost, KeyFunc

__all__ = ["throttle_guard"]

_EXCEPTIONS: dict[int, type[HTTPException]] = {
    400: ValidationException,
    429: TooManyRequestsException,
    503: ServiceUnavailableException,
}


def throttle_guard(
    client: AsyncThrottlerClient, *, key: KeyFunc = client_ip, cost: Cost = 1
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]:
    """A guard that charges ``cost`` tokens (a number or a function of the scope) to
    ``key(scope)`` (None exempts the request)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        outcome = await decide(client, connection.scope, key, cost)
        if isinstance(outcome, Refusal):
            raise _EXCEPTIONS[outcome.status](
                detail=str(outcome.body["message"]), headers=dict(outcome.headers)
            )

    return guard
