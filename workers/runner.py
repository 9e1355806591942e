"""Run the consumer groups of one worker until told to stop.

Loops: *consume* (XREADGROUP the config stream in batches), *reclaim* (XAUTOCLAIM on start
and every ``WORKER_CLAIM_INTERVAL_MS``), *audit* (the audit stream) and *heartbeat*.
Stopping (SIGTERM) stops reading; the batch in hand is finished and acked first.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from opentelemetry.instrumentation.utils import suppress_instrumentation
from redis.exceptions import ResponseError

from core.config_store import ConfigStore
from core.errors import RedisUnavailableError
from core.gateway import Gateway
from core.keys import APPLIERS, AUDITORS
from core.metrics import record_stream_metrics
from core.outage import Outage
from core.streams import ensure_group
from workers.applier import Applier, Entry
from workers.audit import Auditor
from workers.heartbeat import Heartbeat, default_consumer_name
from workers.recovery import Reclaimer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from core.keys import KeySpace
    from core.metrics import Metrics
    from core.settings import Settings
    from core.telemetry import Telemetry

__all__ = ["Worker"]

_log = logging.getLogger("throttler.worker")


@dataclass
class Worker:
    gateway: Gateway
    keys: KeySpace
    settings: Settings
    consumer: str = ""
    telemetry: Telemetry | None = None
    metrics: Metrics | None = None
    audit: bool = True

    def __post_init__(self) -> None:
        self.consumer = self.consumer or default_consumer_name()
        s = self.settings
        self.applier = Applier(
            self.gateway,
            self.keys,
            ConfigStore(self.gateway, self.keys, s.tombstone_ttl_ms),
            self.consumer,
            maxlen=s.stream_maxlen,
            max_deliveries=s.worker_max_deliveries,
            telemetry=self.telemetry,
            metrics=self.metrics,
        )
        self.reclaimer = Reclaimer(
            self.gateway,
            self.keys,
            self.applier,
            idle_ms=s.worker_claim_idle_ms,
            batch=s.worker_batch,
        )
        self.auditor = Auditor(self.gateway, self.keys, self.consumer, self.telemetry)
        self.heartbeat = Heartbeat(
            self.gateway, self.keys, APPLIERS, self.consumer, s.worker_heartbeat_ttl_ms
        )
        self.stopping = anyio.Event()
        # One view of Redis for the whole worker: an outage is logged once, not per loop.
        self.outage = Outage(_log, f"worker {self.consumer}")
        # Blocking reads get a client of their own, whose read timeout outlasts the BLOCK.
        self.reader = Gateway(self.settings, blocking_ms=s.worker_block_ms)
        self._last_beat = time.monotonic()
        if self.metrics is not None:
            self.metrics.heartbeat_age.set_function(lambda: time.monotonic() - self._last_beat)

    async def run(self) -> None:
        """Run until :meth:`stop`; returns once the batch in hand is finished."""
        await self._until_ready()
        _log.info("worker %s started", self.consumer)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._loop, "consume", self._consume_once, 0.0)
                tg.start_soon(
                    self._loop,
                    "reclaim",
                    self.reclaimer.run_once,
                    self.settings.worker_claim_interval_ms / 1000,
                )
                tg.start_soon(self._loop, "heartbeat", self._beat, self.heartbeat.interval_s)
                if self.audit:
                    tg.start_soon(self._loop, "audit", self._audit_once, 0.0)
        finally:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(2),
                contextlib.suppress(RedisUnavailableError),
            ):
                await self.heartbeat.stop()
            with anyio.CancelScope(shield=True):
                await self.reader.aclose()
            _log.info("worker %s stopped (%d applied)", self.consumer, self.applier.applied)

    def stop(self) -> None:
        self.stopping.set()

    async def _until_ready(self) -> None:
        await self.gateway.prepare()
        await self.reader.prepare()
        while not self.stopping.is_set():
            try:
                await ensure_group(self.gateway, self.keys.config_stream, APPLIERS)
                await ensure_group(self.gateway, self.keys.audit_stream, AUDITORS)
            except RedisUnavailableError as exc:
                with anyio.move_on_after(self.outage.failed(exc)):
                    await self.stopping.wait()
            else:
                self.outage.recovered()
                return

    async def _loop(self, name: str, step: Callable[[], Awaitable[int]], pause_s: float) -> None:
        while not self.stopping.is_set():
            delay = pause_s  # a failed step backs off while Redis is down, not after
            try:
                await step()
                self.outage.recovered()
            except RedisUnavailableError as exc:
                delay = max(pause_s, self.outage.failed(exc))
            except Exception:
                _log.exception("%s step failed", name)
                delay = max(pause_s, 0.5)
            if delay:
                with anyio.move_on_after(delay):
                    await self.stopping.wait()

    async def _read(self, stream: str, group: str) -> list[Entry]:
        try:
            with suppress_instrumentation():  # an idle poll is not worth a trace of its own
                reply: Any = await self.reader.call(
                    "read",
                    self.reader.client.xreadgroup,
                    group,
                    self.consumer,
                    {stream: ">"},
                    count=self.settings.worker_batch,
                    block=self.settings.worker_block_ms,
                )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The server lost the group (a restart without persistence, a new server).
            _log.warning("consumer group %s on %s is gone; creating it again", group, stream)
            await ensure_group(self.gateway, stream, group)
            return []
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            return [e for entries in reply.values() for e in entries[0]]
        return [e for _, entries in reply for e in entries]

    async def _consume_once(self) -> int:
        entries = await self._read(self.keys.config_stream, APPLIERS)
        # Even when asked to stop meanwhile, entries read are finished before returning.
        return await self.applier.handle(entries) if entries else 0

    async def _audit_once(self) -> int:
        entries = await self._read(self.keys.audit_stream, AUDITORS)
        return await self.auditor.handle(entries) if entries else 0

    async def _beat(self) -> int:
        await self.heartbeat.beat(self.applier.applied)
        self._last_beat = time.monotonic()
        if self.metrics is not None:
            await record_stream_metrics(self.gateway, self.keys, self.metrics)
        return 0
