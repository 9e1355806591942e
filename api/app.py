"""The Litestar application."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from typing import TYPE_CHECKING

import anyio
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from opentelemetry.metrics import NoOpMeterProvider

from api.admin import ADMIN_ROUTES
from api.batch import BATCH_ROUTES
from api.checks import LeanChecks
from api.drain import Drain
from api.errors import EXCEPTION_HANDLERS
from api.notifications import NOTIFICATION_ROUTES
from api.observability import ObservedApp, metrics_route, name_server_span, span_details
from api.routes import ROUTES
from api.services import Services
from core.config_store import ConfigStore
from core.gateway import Gateway, describe
from core.keys import KeySpace
from core.limiter import Limiter
from core.metrics import Metrics
from core.mutations import Mutations
from core.notifications import NotificationHub
from core.telemetry import Telemetry
from core.version import VERSION
from schemas.limits import Limit

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["create_app"]

_log = logging.getLogger("throttler.api")

#: Extra work to run for the app's lifetime (e.g. an in-process worker), given the services.
Hook = Callable[[Services], AbstractAsyncContextManager[None]]


def build_services(
    settings: Settings, telemetry: Telemetry, metrics: Metrics, drain: Drain | None = None
) -> Services:
    gateway = Gateway(settings, metrics, telemetry=telemetry)
    keys = KeySpace(settings.key_prefix)
    requests, window_ms = settings.default_limit_rate
    default = Limit(requests=requests, window_ms=window_ms, burst=settings.default_capacity)
    hub = NotificationHub(gateway, keys.notify_channel)
    drain = drain or Drain()
    drain.on_begin(hub.end_listeners)  # open notification streams end when the drain begins
    return Services(
        settings=settings,
        keys=keys,
        gateway=gateway,
        limiter=Limiter(gateway, keys, default, inline_ttl_ms=settings.inline_limit_ttl_ms),
        config=ConfigStore(gateway, keys, settings.tombstone_ttl_ms),
        hub=hub,
        metrics=metrics,
        mutations=Mutations(
            gateway,
            keys,
            hub,
            wait_ms=settings.apply_wait_ms,
            maxlen=settings.stream_maxlen,
            telemetry=telemetry,
        ),
        telemetry=telemetry,
        drain=drain,
    )


def create_app(
    settings: Settings,
    hooks: tuple[Hook, ...] = (),
    telemetry: Telemetry | None = None,
    metrics: Metrics | None = None,
    drain: Drain | None = None,
) -> Litestar:
    """The API. ``hooks`` run beside it for its lifetime (the CLI adds the worker).

    ``telemetry`` (default: nothing exported) and ``metrics`` (default: a registry of its
    own) are passed in so that tests can read what the app reports; ``drain`` is the
    server's shutdown state (``throttler.server``; default: one that never begins).
    """
    telemetry = telemetry or Telemetry()
    metrics = metrics or Metrics()
    lean: LeanChecks | None = None

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = build_services(settings, telemetry, metrics, drain)
        app.state.services = services
        app.state.metrics = metrics
        _log.info("api starting; redis %s", describe(settings))
        await services.gateway.prepare()
        hub_task = asyncio.create_task(services.hub.run(), name="notifications")
        with anyio.move_on_after(2):
            await services.hub.subscribed.wait()
        try:
            async with AsyncExitStack() as stack:
                for hook in hooks:
                    await stack.enter_async_context(hook(services))
                assert lean is not None
                lean.services = services
                yield
                _log.info("api stopping")
        finally:
            if lean is not None:
                lean.services = None
            hub_task.cancel()
            with suppress(asyncio.CancelledError):
                await hub_task
            await services.gateway.aclose()
            # uvicorn re-raises SIGTERM after its graceful shutdown, so no atexit hook (the
            # tracer provider's own flush) runs: export the spans still batched now.
            await anyio.to_thread.run_sync(telemetry.flush)

    plugins = []
    if telemetry.enabled:
        plugins.append(
            OpenTelemetryPlugin(
                OpenTelemetryConfig(
                    tracer_provider=telemetry.tracer_provider,
                    meter_provider=NoOpMeterProvider(),
                    scope_span_details_extractor=span_details,
                    exclude=["/metrics", "/health", "/ready"],
                )
            )
        )
    app = Litestar(
        route_handlers=[
            *ROUTES,
            *BATCH_ROUTES,
            *NOTIFICATION_ROUTES,
            *ADMIN_ROUTES,
            metrics_route,
        ],
        plugins=plugins,
        before_request=name_server_span if telemetry.enabled else None,
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Throttler",
            version=VERSION,
            description="Distributed rate limiting on Redis: limits, checks, probes.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        logging_config=None,
    )
    lean = LeanChecks(ObservedApp(app.asgi_handler, metrics), settings, metrics, telemetry)
    app.asgi_handler = lean
    return app
