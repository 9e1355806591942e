"""`kill -9` a `throttler worker` process mid-way through 5,000 changes, start another:
nothing is lost, nothing is applied twice or out of order, nothing is left pending."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import pytest

from core.config_store import ConfigStore
from core.keys import APPLIERS, KeySpace
from core.streams import EVENT_FIELD, publish_many
from schemas.events import AuditEvent, ConfigEvent, SetLimit
from schemas.limits import Limit
from tests.support.poll import until
from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from pathlib import Path

    from redis.asyncio import Redis

    from core.gateway import Gateway

pytestmark = pytest.mark.anyio

T = TypeVar("T")
CHANGES, KEYS = 5000, 500
_audit = msgspec.json.Decoder(AuditEvent)


def worker(redis_url: str, prefix: str, consumer: str) -> ServiceProcess:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "WORKER_BATCH": "50",
        "WORKER_CLAIM_IDLE_MS": "1000",
        "WORKER_CLAIM_INTERVAL_MS": "300",
        "WORKER_BLOCK_MS": "200",
        "WORKER_METRICS_PORT": "0",
    }
    return ServiceProcess(env, ["worker", "--consumer", consumer])


async def pending_ids(redis: Redis, keys: KeySpace, consumer: str | None = None) -> list[str]:
    rows: Any = await redis.xpending_range(
        keys.config_stream, APPLIERS, min="-", max="+", count=CHANGES, consumername=consumer
    )
    return [r["message_id"].decode() for r in rows]


async def test_kill_9_mid_way_then_another_worker_finishes_exactly(
    redis_url: str, prefix: str, redis: Redis, tmp_path: Path, gateway: Gateway
) -> None:
    keys = KeySpace(prefix)
    events: list[ConfigEvent] = [
        SetLimit(key=f"k{i % KEYS}", limit=Limit(requests=i + 1, window_ms=60_000), actor="crash")
        for i in range(CHANGES)
    ]
    ids = await publish_many(gateway, keys, events, 1_000_000)

    first = worker(redis_url, prefix, "crash-1").start(tmp_path, wait=False)
    second = worker(redis_url, prefix, "crash-2")
    try:

        async def mid_batch() -> bool:
            # At least 10% done, and a batch read but not finished (aim for a real orphan).
            done = await redis.xlen(keys.audit_stream) >= CHANGES // 10
            return done and bool(await pending_ids(redis, keys, "crash-1"))

        await until(mid_batch, seconds=20, interval=0.005)
        assert first.proc is not None
        first.proc.kill()  # SIGKILL by pid: no goodbye, no ack, no heartbeat cleanup
        assert first.proc.wait(10) == -9
        done_at_kill = await redis.xlen(keys.audit_stream)
        assert done_at_kill < CHANGES * 9 // 10, "the worker finished before it could be killed"
        orphans = await pending_ids(redis, keys, "crash-1")
        if not orphans:
            # Rarely the kill lands between two batches; then hold the next batch as the
            # dead consumer would have, so that reclaiming is exercised on every run.
            await redis.xreadgroup(APPLIERS, "crash-1", {keys.config_stream: ">"}, count=50)
            orphans = await pending_ids(redis, keys, "crash-1")
        assert orphans

        second.start(tmp_path, wait=False)

        async def complete() -> bool:
            audited = await redis.xlen(keys.audit_stream) == CHANGES
            return audited and not await pending_ids(redis, keys)

        await until(complete, seconds=30, interval=0.005)
        assert second.stop() == 0
    finally:
        first.stop()
        second.stop()

    rows: Any = await redis.xrange(keys.audit_stream)
    records = [_audit.decode(fields[EVENT_FIELD.encode()]) for _, fields in rows]
    # Exactly one audit record per config entry: none lost, none applied twice.
    assert sorted((r.config_id for r in records), key=_order) == ids
    assert {r.result for r in records} <= {"created", "replaced", "stale", "redelivered"}
    assert {r.worker for r in records} == {"crash-1", "crash-2"}
    by_id = {r.config_id: r for r in records}
    # What the dead consumer held was reclaimed (XAUTOCLAIM) and finished by the other.
    assert all(by_id[i].worker == "crash-2" for i in orphans)
    assert await redis.xlen(keys.dead_stream) == 0

    # Every key ends at its last published value and version.
    store = ConfigStore(gateway, keys, 1000)
    last = {e.key: (i, e) for i, e in zip(ids, events, strict=True)}
    for key, (entry_id, event) in last.items():
        assert isinstance(event, SetLimit)
        assert await store.get(key) == event.limit, key
        assert await store.version(key) == entry_id, key


async def _at_least(value: Awaitable[int], floor: int) -> bool:
    return await value >= floor


def _order(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)
