"""The gRPC server of Envoy's rate limit service: ``ShouldRateLimit`` and the standard
health service (``grpc.health.v1``), on RLS_BIND_ADDRESS, in the API process's event loop.

With ``serve --workers N`` every server process listens on the same address with
SO_REUSEPORT (the kernel spreads connections); a single process does not set it, so a
port another server holds is an error at start-up rather than a silent share.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from api.rls.proto import rls_pb2_grpc
from api.rls.service import SERVICE_NAME, RateLimitService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from api.services import Services

__all__ = ["REUSEPORT_ENV", "RlsStartError", "rls_hook", "rls_server"]

_log = logging.getLogger("throttler.rls")
REUSEPORT_ENV = "THROTTLER_RLS_REUSEPORT"  # set by `serve --workers N` for its processes
_GRACE_S = 2.0


class RlsStartError(RuntimeError):
    """The gRPC server could not listen on RLS_BIND_ADDRESS."""


@asynccontextmanager
async def rls_server(services: Services) -> AsyncIterator[grpc.aio.Server | None]:
    """Serve Envoy's protocol for the lifetime of the block (nothing when it is off)."""
    settings = services.settings
    if not settings.rls_enabled:
        yield None
        return
    reuse = 1 if os.environ.get(REUSEPORT_ENV) == "1" else 0
    server = grpc.aio.server(options=[("grpc.so_reuseport", reuse)])
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(RateLimitService(services), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    address = settings.rls_bind_address
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RlsStartError(f"cannot listen on RLS_BIND_ADDRESS {address}: {exc}") from exc
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    _log.info("envoy rate limit service (gRPC) listening on %s", address)
    # A drain (SIGTERM to `serve`) turns health to NOT_SERVING at once, as /ready turns 503:
    # Envoy's health checks move new calls elsewhere while answers continue.
    pending: set[asyncio.Future[None]] = set()
    services.drain.on_begin(
        lambda: pending.add(asyncio.ensure_future(health.enter_graceful_shutdown()))
    )
    try:
        yield server
    finally:
        await health.enter_graceful_shutdown()
        await server.stop(_GRACE_S)
        _log.info("envoy rate limit service stopped")


@asynccontextmanager
async def rls_hook(services: Services) -> AsyncIterator[None]:
    """:func:`rls_server` as an app hook (``api.app.create_app``)."""
    async with rls_server(services):
        yield
