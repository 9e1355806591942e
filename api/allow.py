"""Explicit ``OPTIONS`` answers for paths served by several handlers.

Litestar builds the ``OPTIONS`` answer of a path from its first handler alone when the
path's handlers are registered one by one: ``/rate-limit/{key}`` (GET, POST, DELETE)
answered ``Allow: OPTIONS, POST``. Registered before the other handlers of its path, this
handler answers with every method the path serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import Response, route
from litestar.enums import HttpMethod
from litestar.status_codes import HTTP_204_NO_CONTENT

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

__all__ = ["options_route"]


def options_route(path: str, *methods: str) -> HTTPRouteHandler:
    """``OPTIONS path`` → ``204`` with ``Allow`` listing ``methods`` and ``OPTIONS``."""
    allow = ", ".join(sorted({*methods, "OPTIONS"}))

    async def options() -> Response[None]:
        return Response(None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": allow})

    return route(
        path, http_method=[HttpMethod.OPTIONS], include_in_schema=False, name=f"options {path}"
    )(options)
