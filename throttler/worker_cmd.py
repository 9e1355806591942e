"""``throttler worker``: run the consumer groups; ``--check`` probes a running one."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

import anyio
from prometheus_client import start_http_server

from core.errors import RedisUnavailableError, SettingsError
from core.gateway import Gateway
from core.keys import APPLIERS, KeySpace
from core.metrics import Metrics
from workers.heartbeat import is_alive
from workers.runner import Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from wsgiref.simple_server import WSGIServer

    from api.services import Services
    from core.settings import Settings
    from core.telemetry import Telemetry

__all__ = ["check_worker", "in_process_worker", "run_worker"]

_log = logging.getLogger("throttler.worker")


async def run_worker(settings: Settings, consumer: str, telemetry: Telemetry) -> int:
    """Run until SIGTERM/SIGINT; the batch in hand is finished and acked before exit, then
    the metrics server stops (a scrape in progress is answered first)."""
    metrics = Metrics()
    gateway = Gateway(settings, metrics)
    server: WSGIServer | None = None
    if settings.worker_metrics_port:
        try:
            server, _thread = start_http_server(
                settings.worker_metrics_port, settings.worker_metrics_host, metrics.registry
            )
        except OSError as exc:
            raise SettingsError(
                f"WORKER_METRICS_PORT: cannot listen on {settings.worker_metrics_host}:"
                f"{settings.worker_metrics_port} ({exc.strerror}); choose another port, or 0"
            ) from None
        _log.info(
            "worker metrics on http://%s:%d/metrics",
            settings.worker_metrics_host,
            settings.worker_metrics_port,
        )
    worker = Worker(
        gateway, KeySpace(*settings.keyspace_args), settings, consumer, telemetry, metrics=metrics
    )
    async with anyio.create_task_group() as tg:

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    _log.info("received %s: finishing the current batch", signum.name)
                    worker.stop()
                    return

        tg.start_soon(on_signal)
        await worker.run()
        tg.cancel_scope.cancel()
    await gateway.aclose()
    if server is not None:
        await anyio.to_thread.run_sync(server.shutdown)
        server.server_close()
    return 0


async def check_worker(settings: Settings, consumer: str | None) -> int:
    """0 when the worker's heartbeat is alive (or any on this host), else 1."""
    gateway = Gateway(settings)
    try:
        alive = await is_alive(gateway, KeySpace(*settings.keyspace_args), APPLIERS, consumer)
    except RedisUnavailableError as exc:
        print(f"redis unavailable: {exc}")
        return 1
    finally:
        await gateway.aclose()
    if alive:
        print("alive: " + " ".join(alive))
        return 0
    print("no live worker heartbeat")
    return 1


@asynccontextmanager
async def in_process_worker(services: Services) -> AsyncIterator[None]:
    """The worker of ``throttler serve``: runs in the API's event loop for its lifetime."""
    worker = Worker(
        services.gateway,
        services.keys,
        services.settings,
        telemetry=services.telemetry,
        metrics=services.metrics,
    )
    task = asyncio.create_task(worker.run(), name="worker")
    try:
        yield
    finally:
        worker.stop()
        try:
            await asyncio.wait_for(task, timeout=10)
        except TimeoutError:
            _log.warning("in-process worker did not stop in 10 s; cancelled")
        with suppress(asyncio.CancelledError):
            await task
