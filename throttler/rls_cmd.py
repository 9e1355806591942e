"""``throttler rls``: Envoy's rate limit service alone, without the HTTP API.

The same gRPC server `serve` runs beside HTTP (``api.rls.server``), with what it needs:
the Redis gateway and the domains kept in step with Redis (notifications plus a one-second
version check). Config changes still need a worker (`throttler serve` or `throttler
worker`) on this Redis; metrics are served by `serve` only.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import suppress
from typing import TYPE_CHECKING

import anyio

from api.app import build_services
from api.rls.server import rls_server
from core.errors import RedisUnavailableError, SettingsError
from core.metrics import Metrics

if TYPE_CHECKING:
    from core.settings import Settings
    from core.telemetry import Telemetry

__all__ = ["run_rls"]

_log = logging.getLogger("throttler.rls")


async def run_rls(settings: Settings, telemetry: Telemetry) -> int:
    """Serve until SIGTERM/SIGINT."""
    if not settings.rls_enabled:
        raise SettingsError("RLS_BIND_ADDRESS is off: `throttler rls` has nothing to serve")
    services = build_services(settings, telemetry, Metrics())
    await services.gateway.prepare()
    hub_task = asyncio.create_task(services.hub.run(), name="notifications")
    with anyio.move_on_after(2):
        await services.hub.subscribed.wait()
    with suppress(RedisUnavailableError):  # else the refresh loop loads them later
        await services.domains.load()
    domain_task = asyncio.create_task(services.domains.run(), name="rls-domains")
    try:
        async with rls_server(services):
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    _log.info("received %s: stopping", signum.name)
                    break
    finally:
        for task in (hub_task, domain_task):
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await services.gateway.aclose()
    return 0
