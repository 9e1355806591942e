"""HTTP metrics, the access log and ``GET /metrics``.

:class:`ObservedApp` wraps the whole ASGI app (so 404s and 405s are seen too): one counter
and one histogram per request, labelled by the route *template* (never a key), and one
access-log line with route, status and duration.
"""

from __future__ import annotations

import logging
import time
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, get
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.metrics import record_stream_metrics

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from api.services import Services
    from core.metrics import Metrics

__all__ = [
    "ObservedApp",
    "metrics_route",
    "name_server_span",
    "span_details",
]

_access = logging.getLogger("throttler.access")
# Litestar adds "; charset=utf-8" to text/* types itself; CONTENT_TYPE_LATEST has it already.
_PROMETHEUS_TEXT = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


class ObservedApp:
    """ASGI middleware around the Litestar app."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.quiet = frozenset({"/metrics", "/health", "/ready"})  # no access-log lines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind: str = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        # The server span (started by the OpenTelemetry middleware inside this one) is the
        # active span when the response starts; the access line, logged after that span has
        # ended, is logged in its context so that it carries the request's trace id.
        span_context = INVALID_SPAN_CONTEXT

        async def send_wrapper(message: Message) -> None:
            nonlocal status, span_context
            if message["type"] == "http.response.start":
                status = message["status"]
                span_context = trace.get_current_span().get_span_context()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = _template(scope)
            method = scope.get("method", "")
            self.metrics.http_requests.labels(route, method, str(status)).inc()
            self.metrics.http_duration.labels(route, method).observe(elapsed)
            if route not in self.quiet and _access.isEnabledFor(logging.INFO):
                with trace.use_span(NonRecordingSpan(span_context)):
                    _access.info(
                        "%s %s %d %.1fms",
                        method,
                        route,
                        status,
                        elapsed * 1000,
                        extra={
                            "event": "access",
                            "route": route,
                            "method": method,
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 3),
                        },
                    )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The WebSocket access line, in place of uvicorn's (which logs the query string,
        ticket and all; core.logs drops it): the route and what became of the upgrade."""
        outcome = "closed before accept"

        async def send_wrapper(message: Message) -> None:
            nonlocal outcome
            if message["type"] == "websocket.accept" and outcome == "closed before accept":
                outcome = "accepted"
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _template(scope)
            _access.info(
                "WebSocket %s %s",
                route,
                outcome,
                extra={
                    "event": "access",
                    "route": route,
                    "method": "WEBSOCKET",
                    "outcome": outcome,
                },
            )


def span_details(scope: Scope) -> tuple[str, dict[str, str]]:
    """The server span's first name: the method only, as the route is not known yet (the
    raw path would put rate-limit keys into span names). :func:`name_server_span` adds it."""
    method = str(scope.get("method", ""))
    return (method or "websocket"), {}


def _template(scope: Scope) -> str:
    return str(scope.get("path_template") or "unmatched").replace(":str}", "}")


async def name_server_span(request: Request[Any, Any, Any]) -> None:
    """``before_request`` hook: name the server span by method and route template."""
    route = _template(request.scope)
    span = trace.get_current_span()
    span.update_name(f"{request.method} {route}")
    span.set_attribute("http.route", route)


@get(
    "/metrics",
    tags=["probes"],
    summary="Prometheus metrics",
    media_type=_PROMETHEUS_TEXT,
    include_in_schema=True,
)
async def metrics_route(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text format: checks, latency, Redis, config changes, streams, HTTP."""
    services: Services = request.app.state.services
    metrics: Metrics = request.app.state.metrics
    with suppress(Exception):  # a scrape must not fail because Redis does
        await record_stream_metrics(services.gateway, services.keys, metrics)
    return Response(generate_latest(metrics.registry), media_type=_PROMETHEUS_TEXT)
