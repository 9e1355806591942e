"""Liveness and readiness: ``GET`` and ``HEAD /health`` and ``/ready``.

Load balancers and uptime checkers often probe with ``HEAD``: it answers as ``GET`` does
(status and headers, ``Content-Length`` included) without the body.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from litestar import Request, Response, get, head
from litestar.openapi.datastructures import ResponseSpec

from api.allow import options_route
from core.errors import RedisUnavailableError
from core.version import VERSION
from schemas.http import HealthResponse, ReadyResponse

if TYPE_CHECKING:
    from api.services import Services

__all__ = ["PROBE_ROUTES"]

_encoder = msgspec.json.Encoder()
_NOT_READY = "Redis did not answer within a second."


def _health() -> Response[HealthResponse]:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return Response(HealthResponse(status="healthy", version=VERSION, timestamp=now))


async def _readiness(request: Request[Any, Any, Any]) -> Response[ReadyResponse]:
    services: Services = request.app.state.services
    ok = False
    with anyio.move_on_after(1.0):
        try:
            ok = await services.ping()
        except RedisUnavailableError:
            ok = False
    if ok:
        return Response(ReadyResponse(status="ready", redis="connected"))
    return Response(ReadyResponse(status="not_ready", redis="disconnected"), status_code=503)


def _head_of(response: Response[Any]) -> Response[None]:
    """``response`` without its body: same status and headers, the GET body's length."""
    length = len(_encoder.encode(response.content))
    headers = {"content-type": "application/json", "content-length": str(length)}
    return Response(None, status_code=response.status_code, headers=headers)


@get("/health", tags=["probes"], operation_id="health", summary="Liveness probe")
async def health() -> Response[HealthResponse]:
    """Always 200 while the process serves requests; does not touch Redis."""
    return _health()


@head(
    "/health",
    tags=["probes"],
    operation_id="health_head",
    summary="Liveness probe, without a body",
)
async def health_head() -> Response[None]:
    """As `GET /health`, without the body."""
    return _head_of(_health())


@get(
    "/ready",
    tags=["probes"],
    operation_id="ready",
    summary="Readiness probe",
    responses={503: ResponseSpec(data_container=ReadyResponse, description=_NOT_READY)},
)
async def ready(request: Request[Any, Any, Any]) -> Response[ReadyResponse]:
    """200 when Redis answers a PING within a second, else 503 (within a second).

    From SIGTERM on, the server answers 503 `{"error": "shutting_down", ...}` instead (it
    drains before it stops: see docs/operations.md).
    """
    return await _readiness(request)


@head(
    "/ready",
    tags=["probes"],
    operation_id="ready_head",
    summary="Readiness probe, without a body",
    responses={503: ResponseSpec(data_container=None, description=_NOT_READY)},
)
async def ready_head(request: Request[Any, Any, Any]) -> Response[None]:
    """As `GET /ready`, without the body."""
    return _head_of(await _readiness(request))


PROBE_ROUTES = [
    options_route("/health", "GET", "HEAD"),
    options_route("/ready", "GET", "HEAD"),
    health,
    health_head,
    ready,
    ready_head,
]
