"""The Litestar application."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from typing import TYPE_CHECKING

import anyio
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.middleware._internal.cors import CORSMiddleware  # (public alias deprecated)
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from opentelemetry.metrics import NoOpMeterProvider

from api.admin import ADMIN_ROUTES
from api.batch import BATCH_ROUTES
from api.checks import LeanChecks
from api.drain import Drain
from api.edge import EdgeGuard
from api.errors import EXCEPTION_HANDLERS
from api.notifications import NOTIFICATION_ROUTES
from api.observability import ObservedApp, metrics_route, name_server_span, span_details
from api.openapi import complete_document, openapi_config
from api.policies import POLICY_ROUTES
from api.probes import PROBE_ROUTES
from api.rls.routes import RLS_ROUTES
from api.routes import ROUTES
from api.services import Services
from api.spend import SPEND_ROUTES
from api.throttle import AddressThrottle, ListenerSlots
from api.tickets import redact_ticket_in_span
from core.config_store import ConfigStore
from core.domains import DomainSync
from core.errors import RedisUnavailableError
from core.gateway import Gateway, describe
from core.keys import KeySpace
from core.limiter import Limiter
from core.metrics import Metrics
from core.mutations import Mutations
from core.notifications import NotificationHub
from core.policies import PolicySync, PolicyTable, Resolved
from core.telemetry import Telemetry
from schemas.limits import Limit

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["Hook", "build_services", "create_app"]

_log = logging.getLogger("throttler.api")

#: Extra work to run for the app's lifetime (e.g. an in-process worker), given the services.
Hook = Callable[[Services], AbstractAsyncContextManager[None]]


def build_services(
    settings: Settings, telemetry: Telemetry, metrics: Metrics, drain: Drain | None = None
) -> Services:
    gateway = Gateway(settings, metrics, telemetry=telemetry)
    keys = KeySpace(*settings.keyspace_args)
    requests, window_ms = settings.default_limit_rate
    default = Limit(requests=requests, window_ms=window_ms, burst=settings.default_capacity)
    hub = NotificationHub(gateway, keys.notify_channel)
    table = PolicyTable(Resolved.of(None, (default,)))
    policies = PolicySync(gateway, keys, table)
    hub.on_policy_change(policies.changed)
    domains = DomainSync(gateway, keys)
    hub.on_domain_change(domains.changed)
    drain = drain or Drain()
    drain.on_begin(hub.end_listeners)  # open notification streams end when the drain begins
    limiter = Limiter(gateway, keys, table, inline_ttl_ms=settings.inline_limit_ttl_ms)
    return Services(
        settings=settings,
        keys=keys,
        gateway=gateway,
        limiter=limiter,
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
        policies=policies,
        auth_failures=AddressThrottle(
            limiter,
            "auth-failures",
            settings.auth_failures,
            settings.auth_failure_window_ms,
            wait_s=settings.redis_timeout_ms / 2000,
        ),
        mutation_limit=AddressThrottle(
            limiter,
            "mutations",
            settings.mutations,
            settings.mutation_window_ms,
            wait_s=settings.redis_timeout_ms / 2000,
        ),
        listeners=ListenerSlots(settings.max_listeners, settings.max_listeners_per_client),
        domains=domains,
        telemetry=telemetry,
        drain=drain,
    )


#: What a browser page may read from an answer (besides the CORS-safelisted headers).
_EXPOSED = [
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-Window",
    "X-RateLimit-Enforced",
    "RateLimit-Policy",
    "RateLimit",
]


def _cors(settings: Settings) -> CORSConfig | None:
    """Cross-origin access for the web origins in ``CORS_ORIGINS`` (none by default)."""
    origins = settings.cors_origin_list
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "HEAD", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=_EXPOSED,
        max_age=600,
    )


def create_app(
    settings: Settings,
    hooks: tuple[Hook, ...] = (),
    telemetry: Telemetry | None = None,
    metrics: Metrics | None = None,
    drain: Drain | None = None,
    *,
    check_host: bool = False,
) -> Litestar:
    """The API. ``hooks`` run beside it for its lifetime (the CLI adds the worker).

    ``telemetry`` (default: nothing exported) and ``metrics`` (default: a registry of its
    own) are passed in so that tests can read what the app reports; ``drain`` is the
    server's shutdown state (``throttler.server``; default: one that never begins);
    ``check_host``: refuse a ``Host`` outside ALLOWED_HOSTS (the served app does; the
    in-process test client's ``testserver.local`` would not pass).
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
        with suppress(RedisUnavailableError):  # else the policy loop loads them later
            await services.policies.load()
            await services.domains.load()
        policy_task = asyncio.create_task(services.policies.run(), name="policies")
        domain_task = asyncio.create_task(services.domains.run(), name="rls-domains")
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
            for task in (hub_task, policy_task, domain_task):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
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
                    server_request_hook_handler=redact_ticket_in_span,
                    exclude=["/metrics", "/health", "/ready"],
                )
            )
        )
    app = Litestar(
        route_handlers=[
            *PROBE_ROUTES,
            *ROUTES,
            *POLICY_ROUTES,
            *BATCH_ROUTES,
            *SPEND_ROUTES,
            *NOTIFICATION_ROUTES,
            *ADMIN_ROUTES,
            *RLS_ROUTES,
            metrics_route,
        ],
        plugins=plugins,
        before_request=name_server_span if telemetry.enabled else None,
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=openapi_config(),
        logging_config=None,
    )
    complete_document(app.openapi_schema)  # built once here, served as completed
    lean = LeanChecks(ObservedApp(app.asgi_handler, metrics), settings, metrics, telemetry)
    cors = _cors(settings)
    # CORS goes around the lean check layer too (Litestar's own cors_config would sit inside
    # it, and check answers would miss their CORS headers).
    inner = lean if cors is None else CORSMiddleware(app=lean, config=cors)
    app.asgi_handler = EdgeGuard(
        inner,
        hosts=settings.host_allowlist if check_host else None,
        origins=frozenset(o.lower() for o in settings.cors_origin_list),
    )
    return app
