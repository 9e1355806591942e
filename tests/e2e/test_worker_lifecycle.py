"""A `throttler worker` process: heartbeat, `--check` for probes, and SIGTERM (stop
reading, finish and ack the batch in hand, exit 0)."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec
import pytest

from core.config_store import ConfigStore
from core.keys import APPLIERS, KeySpace
from core.streams import EVENT_FIELD, publish_many
from schemas.events import AuditEvent, ConfigEvent, SetLimit
from schemas.limits import Limit
from tests.support.poll import until
from tests.support.service import ServiceProcess
from workers.heartbeat import default_consumer_name

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from redis.asyncio import Redis

    from core.gateway import Gateway

pytestmark = pytest.mark.anyio

T = TypeVar("T")
_audit = msgspec.json.Decoder(AuditEvent)


def _env(redis_url: str, prefix: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "WORKER_BATCH": "20",
        "WORKER_BLOCK_MS": "200",
        "WORKER_METRICS_PORT": "0",
    }


async def check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    """``throttler worker --check [args]``, as a probe runs it."""
    with anyio.fail_after(20):
        return await anyio.run_process(
            [sys.executable, "-m", "throttler", "worker", "--check", *args],
            env={**os.environ, **env},
            check=False,
        )


async def test_check_exits_1_when_no_worker_runs(redis_url: str, prefix: str) -> None:
    probe = await check(_env(redis_url, prefix))
    assert probe.returncode == 1
    assert b"no live worker heartbeat" in probe.stdout


async def test_heartbeat_check_and_sigterm(
    redis_url: str, prefix: str, redis: Redis, tmp_path: Path, gateway: Gateway
) -> None:
    keys = KeySpace(prefix)
    env = _env(redis_url, prefix)
    proc = ServiceProcess(env, ["worker"]).start(tmp_path, wait=False)
    assert proc.proc is not None
    # The default consumer name is <host>-<pid>, and the probe looks for this host's.
    consumer = default_consumer_name().rsplit("-", 1)[0] + f"-{proc.proc.pid}"
    beat = keys.heartbeat(APPLIERS, consumer)
    second: ServiceProcess | None = None
    try:
        await until(lambda: redis.exists(beat), seconds=20, interval=0.005)
        ttl = await redis.pttl(beat)
        assert 0 < ttl <= 15_000
        alive = await check(env)
        assert alive.returncode == 0, alive.stdout
        assert beat.encode() in alive.stdout
        assert (await check(env, "--consumer", "somebody-else")).returncode == 1

        # A backlog, and SIGTERM while the worker is working through it.
        count = 3000
        events: list[ConfigEvent] = [
            SetLimit(key=f"k{i % 300}", limit=Limit(requests=i + 1, window_ms=1000))
            for i in range(count)
        ]
        ids = await publish_many(gateway, keys, events, 1_000_000)

        async def started() -> bool:
            return await redis.xlen(keys.audit_stream) >= count // 10

        await until(started, seconds=20, interval=0.005)
        proc.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        popen = proc.proc
        code = await anyio.to_thread.run_sync(lambda: popen.wait(10))
        assert code == 0, proc.log()
        assert time.monotonic() - stopped_at < 5
        done = await redis.xlen(keys.audit_stream)
        assert done < count, "the worker finished the backlog before SIGTERM arrived"
        assert "finishing the current batch" in proc.log()

        # It finished and acked the batch in hand; its heartbeat is gone, probes say so.
        mine: Any = await redis.xpending_range(
            keys.config_stream, APPLIERS, min="-", max="+", count=count, consumername=consumer
        )
        assert mine == []
        assert not await redis.exists(beat)
        assert (await check(env)).returncode == 1

        # What it had not read is still there for another worker: nothing is lost.
        env_2 = {**env, "WORKER_BATCH": "200"}
        second = ServiceProcess(env_2, ["worker", "--consumer", "second"]).start(
            tmp_path, wait=False
        )

        async def complete() -> bool:
            return await redis.xlen(keys.audit_stream) == count

        await until(complete, seconds=20, interval=0.005)
        assert second.stop() == 0
    finally:
        proc.stop()
        if second is not None:
            second.stop()
    rows: Any = await redis.xrange(keys.audit_stream)
    records = [_audit.decode(fields[EVENT_FIELD.encode()]) for _, fields in rows]
    assert sorted(r.config_id for r in records) == sorted(ids)
    assert {r.worker for r in records} == {consumer, "second"}
    store = ConfigStore(gateway, keys, 1000)
    for i in range(count - 300, count):
        assert await store.get(f"k{i % 300}") == Limit(requests=i + 1, window_ms=1000)
