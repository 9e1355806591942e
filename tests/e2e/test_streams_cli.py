"""The operator's commands as real processes: `throttler apply FILE [--wait]` and
`throttler dead-letters list|replay`, against a real Redis with a worker running."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec
import pytest

from core.config_store import ConfigStore
from core.keys import APPLIERS, KeySpace
from core.settings import load_settings
from core.streams import EVENT_FIELD, publish
from schemas.events import AuditEvent, SetLimit
from schemas.limits import Limit
from tests.support.poll import until
from tests.support.service import ServiceProcess
from tests.support.worker import running_worker

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from redis.asyncio import Redis

    from core.gateway import Gateway

pytestmark = pytest.mark.anyio

T = TypeVar("T")
_audit = msgspec.json.Decoder(AuditEvent)


def _env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "WORKER_METRICS_PORT": "0",
        "WORKER_BLOCK_MS": "200",
        **extra,
    }


async def throttler(
    env: dict[str, str], *args: str, seconds: float = 60
) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(seconds):
        return await anyio.run_process(
            [sys.executable, "-m", "throttler", *args], env={**os.environ, **env}, check=False
        )


async def test_apply_10000_limits_and_wait(
    redis_url: str, prefix: str, redis: Redis, tmp_path: Path, gateway: Gateway
) -> None:
    count = 10_000
    items = [
        f"- key: bulk:{i}\n  requests: {i + 1}\n  window_ms: 60000\n"
        + ("  algorithm: gcra\n  burst: 5\n" if i % 2 else "")
        for i in range(count)
    ]
    path = tmp_path / "limits.yaml"
    path.write_text("".join(items), encoding="utf-8")
    env = _env(redis_url, prefix)
    worker = ServiceProcess(env, ["worker"]).start(tmp_path, wait=False)
    try:
        done = await throttler(env, "apply", str(path), "--wait", "--timeout", "60", seconds=90)
        assert worker.stop() == 0
    finally:
        worker.stop()
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, out + err
    keys = KeySpace(prefix)
    assert f"published {count} changes" in out
    assert "applied 10000, skipped 0, failed 0, pending 0" in out
    assert "\r" not in err  # progress bars are for terminals, not pipes and logs
    assert await redis.xlen(keys.config_stream) == count
    assert await redis.xlen(keys.audit_stream) == count
    store = ConfigStore(gateway, keys, 1000)
    assert await store.get("bulk:0") == Limit(requests=1, window_ms=60_000)
    assert await store.get("bulk:9999") == Limit(10_000, 60_000, algorithm="gcra", burst=5)
    rows: Any = await redis.xrange(keys.audit_stream, count=1)
    first = _audit.decode(rows[0][1][EVENT_FIELD.encode()])
    assert (first.actor, first.result) == ("cli:apply", "created")


async def test_a_file_with_one_bad_entry_sends_nothing(
    redis_url: str, prefix: str, redis: Redis, tmp_path: Path, gateway: Gateway
) -> None:
    items = [f"- key: bulk:{i}\n  requests: 10\n  window_ms: 60000\n" for i in range(100)]
    items[56] = "- key: bulk:56\n  requests: 10\n  window_ms: -1\n"  # item 57, line 169
    path = tmp_path / "limits.yaml"
    path.write_text("".join(items), encoding="utf-8")
    keys = KeySpace(prefix)
    await publish(gateway, keys, SetLimit(key="before", limit=Limit(1, 1000)), 1000)
    env = _env(redis_url, prefix)
    done = await throttler(env, "apply", str(path))
    err = done.stderr.decode()
    assert done.returncode == 2
    assert f"{path}:169: item 57: window_ms: Expected `int` >= 1" in err
    assert "1 problem; nothing was sent" in err
    assert await redis.xlen(keys.config_stream) == 1


async def test_dead_letters_list_and_replay(
    redis_url: str, prefix: str, redis: Redis, tmp_path: Path, gateway: Gateway
) -> None:
    env = _env(
        redis_url,
        prefix,
        WORKER_MAX_DELIVERIES="2",
        WORKER_CLAIM_IDLE_MS="100",
        WORKER_CLAIM_INTERVAL_MS="100",
    )
    settings = load_settings(env, env_file=None)
    keys = KeySpace(prefix)
    store = ConfigStore(gateway, keys, settings.tombstone_ttl_ms)
    await redis.set(keys.limit("broken"), "not a hash")  # every apply fails: WRONGTYPE
    limit = Limit(requests=7, window_ms=1000)
    failing = await publish(gateway, keys, SetLimit(key="broken", limit=limit), 1000)
    await redis.xadd(keys.config_stream, {EVENT_FIELD: "garbage"})

    async with running_worker(settings, "cli-test"):

        async def two_letters() -> bool:
            return await redis.xlen(keys.dead_stream) == 2

        await until(two_letters)
        listed = await throttler(env, "dead-letters", "list")
        assert listed.returncode == 0, listed.stderr
        entries = json.loads(listed.stdout)  # the body of GET /dead-letters
        assert [set(entry) for entry in entries] == [{"id", "letter"}] * 2
        letters = {e["letter"]["config_id"]: {"id": e["id"], **e["letter"]} for e in entries}
        broken = letters.pop(failing)
        (garbage,) = letters.values()
        assert set(broken) == {
            "id",
            "config_id",
            "reason",
            "fields",
            "deliveries",
            "dead_at_ms",
            "worker",
            "truncated",
        }
        assert broken["truncated"] is False
        assert broken["deliveries"] == 2
        assert "WRONGTYPE" in broken["reason"]
        assert json.loads(broken["fields"][EVENT_FIELD])["key"] == "broken"
        assert garbage["fields"] == {EVENT_FIELD: "garbage"}
        assert "invalid event" in garbage["reason"]

        missing = await throttler(env, "dead-letters", "replay", "1-1")
        assert missing.returncode == 1
        assert b"not in the dead-letter stream: 1-1" in missing.stdout

        await redis.delete(keys.limit("broken"))  # the operator fixes the cause...
        replayed = await throttler(env, "dead-letters", "replay", broken["id"])  # ...and replays
        assert replayed.returncode == 0, replayed.stderr
        out = replayed.stdout.decode().strip()
        assert out.startswith(f"replayed {broken['id']} (was {failing}) as ")
        new_id = out.rsplit(" ", 1)[1]

        async def applied() -> bool:
            return await store.version("broken") == new_id

        await until(applied)
    assert await store.get("broken") == limit
    rows: Any = await redis.xrange(keys.dead_stream)
    left = [json.loads(fields[EVENT_FIELD.encode()])["config_id"] for _, fields in rows]
    assert left == [garbage["config_id"]]
    info: Any = await redis.xpending(keys.config_stream, APPLIERS)
    assert info["pending"] == 0
