"""Consumer-group workers on a real Redis: ordered idempotent apply, stale and redelivered
entries, poison entries, failing applies, several workers on one group, retention."""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from core.config_store import ConfigStore
from core.gateway import Gateway
from core.keys import APPLIERS, KeySpace
from core.settings import Settings, load_settings
from core.streams import EVENT_FIELD, publish, publish_many
from schemas.events import (
    AuditEvent,
    DeadLetter,
    DeleteLimit,
    KeyEvent,
    LimitChanged,
    SetLimit,
)
from schemas.limits import Limit
from tests.support.poll import until
from tests.support.servers import RedisProcess
from workers.runner import Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from redis.asyncio import Redis

pytestmark = pytest.mark.anyio

T = TypeVar("T")
_audit = msgspec.json.Decoder(AuditEvent)
_dead = msgspec.json.Decoder(DeadLetter)
FAST = {"WORKER_CLAIM_IDLE_MS": "100", "WORKER_CLAIM_INTERVAL_MS": "100"}


def _settings(redis_url: str, prefix: str, **extra: str) -> Settings:
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "WORKER_BLOCK_MS": "100", **extra}
    return load_settings(env, env_file=None)


@asynccontextmanager
async def running(settings: Settings, *consumers: str) -> AsyncIterator[list[Worker]]:
    """Workers with these consumer names, in this event loop, stopped on exit."""
    gateway = Gateway(settings)
    keys = KeySpace(settings.key_prefix)
    workers = [Worker(gateway, keys, settings, name) for name in consumers]
    try:
        async with anyio.create_task_group() as tg:
            for worker in workers:
                tg.start_soon(worker.run)
            yield workers
            for worker in workers:
                worker.stop()
    finally:
        await gateway.aclose()


async def audits(redis: Redis, keys: KeySpace) -> list[AuditEvent]:
    rows: Any = await redis.xrange(keys.audit_stream)
    return [_audit.decode(fields[EVENT_FIELD.encode()]) for _, fields in rows]


async def dead_letters(redis: Redis, keys: KeySpace) -> list[DeadLetter]:
    rows: Any = await redis.xrange(keys.dead_stream)
    return [_dead.decode(fields[EVENT_FIELD.encode()]) for _, fields in rows]


async def pending(redis: Redis, keys: KeySpace) -> int:
    info: Any = await redis.xpending(keys.config_stream, APPLIERS)
    return int(info["pending"])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _version_after(entry_id: str, ms: int) -> str:
    return f"{int(entry_id.partition('-')[0]) + ms}-0"


async def test_stale_and_redelivered_entries_change_nothing(
    redis_url: str, prefix: str, redis: Redis, gateway: Gateway
) -> None:
    settings = _settings(redis_url, prefix)
    keys = KeySpace(prefix)
    store = ConfigStore(gateway, keys, settings.tombstone_ttl_ms)
    old = Limit(requests=1, window_ms=1000)
    newer = Limit(requests=99, window_ms=1000)
    maxlen = settings.stream_maxlen
    ids = await publish_many(
        gateway,
        keys,
        [
            SetLimit(key="s:replaced", limit=old, actor="late"),
            SetLimit(key="s:deleted", limit=old, actor="late"),
            SetLimit(key="s:again", limit=newer, actor="first"),
        ],
        maxlen,
    )
    # Newer changes got there first (another worker, a later entry)...
    assert (await store.apply("s:replaced", newer, _version_after(ids[0], 1000))).applied
    assert (await store.apply("s:deleted", newer, _version_after(ids[1], 1000))).applied
    assert (await store.apply("s:deleted", None, _version_after(ids[1], 2000))).applied
    # ... and this entry's own change was applied by a delivery that died before its ack.
    assert (await store.apply("s:again", newer, ids[2])).outcome == "created"

    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.notify_channel)
    try:
        async with running(settings, "w1"):
            records = await until(
                lambda: _when(audits(redis, keys), lambda r: len(r) == 3), seconds=10
            )
        notes: list[LimitChanged] = []
        while len(notes) < 3:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                notes.append(msgspec.json.decode(message["data"], type=LimitChanged))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    by_key = {r.key: r for r in records}
    assert [r.config_id for r in records] == ids
    assert (by_key["s:replaced"].result, by_key["s:replaced"].after) == ("stale", None)
    assert by_key["s:replaced"].before == newer
    assert (by_key["s:deleted"].result, by_key["s:deleted"].before) == ("stale", None)
    assert by_key["s:again"].result == "redelivered"
    assert by_key["s:again"].actor == "first"
    assert [n.result for n in notes] == ["stale", "stale", "redelivered"]
    # State untouched by the stale entries: the newer limit, the tombstone.
    assert await store.get("s:replaced") == newer
    assert await store.version("s:replaced") == _version_after(ids[0], 1000)
    assert await store.get("s:deleted") is None
    assert await store.get("s:again") == newer
    assert await pending(redis, keys) == 0


async def _when(value: Awaitable[T], ok: Callable[[T], bool]) -> T | None:
    result = await value
    return result if ok(result) else None


async def test_poison_entries_are_dead_lettered_and_the_worker_keeps_going(
    redis_url: str, prefix: str, redis: Redis, gateway: Gateway
) -> None:
    settings = _settings(redis_url, prefix)
    keys = KeySpace(prefix)
    stream = keys.config_stream
    good = {"requests": 5, "window_ms": 1000}
    poison: list[tuple[dict[Any, Any], str]] = [
        ({EVENT_FIELD: "not json{"}, "invalid event: JSON is malformed"),
        ({"something": "else"}, "no 'event' field"),
        (
            {EVENT_FIELD: json.dumps({"type": "set_limit", "key": "a{b}", "limit": good})},
            "- at `$.key`",
        ),
        (
            {
                EVENT_FIELD: json.dumps(
                    {"type": "set_limit", "key": "k", "limit": {**good, "requests": "ten"}}
                )
            },
            "Expected `int`, got `str` - at `$.limit.requests`",
        ),
        (
            {EVENT_FIELD: json.dumps({"type": "set_limit", "key": "k"})},
            "missing required field `limit`",
        ),
        ({EVENT_FIELD: json.dumps({"type": "rename", "key": "k"})}, "Invalid value 'rename'"),
        ({EVENT_FIELD: b"\xff\xfe"}, "invalid event"),
        ({b"\xff": b"\xfe", EVENT_FIELD: "{}"}, "invalid event"),
    ]
    bad_ids = [_text(await redis.xadd(stream, fields)) for fields, _ in poison]
    first_good = await publish(gateway, keys, SetLimit(key="p:ok", limit=Limit(5, 1000)), 10_000)

    async with running(settings, "w1"):
        await until(lambda: _when(audits(redis, keys), lambda r: len(r) == 1))
        # Still consuming after all that:
        later = await publish(gateway, keys, DeleteLimit(key="p:ok"), 10_000)
        records = await until(lambda: _when(audits(redis, keys), lambda r: len(r) == 2))
    assert [(r.config_id, r.result) for r in records] == [
        (first_good, "created"),
        (later, "deleted"),
    ]

    letters = await dead_letters(redis, keys)
    assert [d.config_id for d in letters] == bad_ids
    for letter, (fields, reason) in zip(letters, poison, strict=True):
        assert reason in letter.reason, letter.reason
        assert (letter.deliveries, letter.worker) == (1, "w1")
        assert letter.dead_at_ms > 0
        if fields.get(EVENT_FIELD) == "not json{":
            assert letter.fields == {EVENT_FIELD: "not json{"}
        assert len(letter.fields) == len(fields)
    assert await pending(redis, keys) == 0


async def test_an_apply_that_keeps_failing_is_dead_lettered_with_its_error(
    redis_url: str, prefix: str, redis: Redis, gateway: Gateway
) -> None:
    settings = _settings(redis_url, prefix, WORKER_MAX_DELIVERIES="3", **FAST)
    keys = KeySpace(prefix)
    # A limit hash that is not a hash: every apply of this key fails with WRONGTYPE.
    await redis.set(keys.limit("broken"), "not a hash")
    failing = await publish(gateway, keys, SetLimit(key="broken", limit=Limit(5, 1000)), 10_000)
    fine = await publish(gateway, keys, SetLimit(key="fine", limit=Limit(5, 1000)), 10_000)

    async with running(settings, "w1"):
        letters = await until(lambda: dead_letters(redis, keys), seconds=15)
        records = await until(lambda: audits(redis, keys))

        async def drained() -> bool:
            return await pending(redis, keys) == 0

        await until(drained, seconds=5)
    (letter,) = letters
    assert letter.config_id == failing
    assert letter.deliveries == settings.worker_max_deliveries
    assert "WRONGTYPE" in letter.reason, letter.reason
    assert json.loads(letter.fields[EVENT_FIELD])["key"] == "broken"
    assert [(r.config_id, r.result) for r in records] == [(fine, "created")]
    assert await redis.get(keys.limit("broken")) == b"not a hash"


async def test_three_workers_reach_the_state_one_worker_reaches(
    redis_url: str, redis: Redis, gateway: Gateway
) -> None:
    count, nkeys = 3000, 100
    events: list[KeyEvent] = []
    expected: dict[str, Limit | None] = {}
    for i in range(count):
        key = f"k{(i * 7) % nkeys}"
        if i % 11 == 0:
            events.append(DeleteLimit(key=key))
            expected[key] = None
        else:
            if i % 3 == 0:
                limit = Limit(requests=i + 1, window_ms=1000 + i, algorithm="fixed_window")
            else:
                limit = Limit(requests=i + 1, window_ms=1000 + i, algorithm="gcra", burst=i % 7 + 1)
            events.append(SetLimit(key=key, limit=limit))
            expected[key] = limit

    async def run(prefix: str, consumers: tuple[str, ...]) -> tuple[dict[str, Any], set[str]]:
        settings = _settings(redis_url, prefix, WORKER_BATCH="20")
        keys = KeySpace(prefix)
        ids = await publish_many(gateway, keys, events, settings.stream_maxlen)
        async with running(settings, *consumers):
            await until(
                lambda: _when(redis.xlen(keys.audit_stream), lambda n: n == count), seconds=30
            )
        records = await audits(redis, keys)
        assert sorted(r.config_id for r in records) == sorted(ids)  # exactly one each
        assert await pending(redis, keys) == 0
        store = ConfigStore(gateway, keys, settings.tombstone_ttl_ms)
        state = {f"k{i}": await store.get(f"k{i}") for i in range(nkeys)}
        versions = {f"k{i}": await store.version(f"k{i}") for i in range(nkeys)}
        last = {e.key: i for i, e in zip(ids, events, strict=True)}
        assert versions == last  # every key holds its last entry's version
        return state, {r.worker for r in records}

    one, one_workers = await run(f"t1{time.monotonic_ns()}", ("solo",))
    three, three_workers = await run(f"t3{time.monotonic_ns()}", ("a", "b", "c"))
    assert one == expected
    assert three == expected
    assert one_workers == {"solo"}
    assert len(three_workers) >= 2, three_workers


async def test_streams_are_trimmed_to_the_retention(
    redis_url: str, prefix: str, redis: Redis, gateway: Gateway
) -> None:
    settings = _settings(redis_url, prefix, STREAM_MAXLEN="100")
    keys = KeySpace(prefix)
    maxlen = settings.stream_maxlen
    events: list[KeyEvent] = [
        SetLimit(key=f"r{i % 10}", limit=Limit(i + 1, 1000)) for i in range(1000)
    ]
    # Published ahead of any worker: the config stream keeps about the last STREAM_MAXLEN.
    # Approximate (~) trimming removes whole stream nodes, so at least 100 entries stay.
    ids = await publish_many(gateway, keys, events, maxlen)
    assert 100 <= await redis.xlen(keys.config_stream) < 300

    async def audited(config_id: str) -> bool:
        last: Any = await redis.xrevrange(keys.audit_stream, count=1)
        return bool(last) and _audit.decode(last[0][1][b"event"]).config_id == config_id

    async with running(settings, "w1"):
        await until(lambda: audited(ids[-1]))
        # Published while a worker keeps up: every entry is audited, and the audit stream
        # is trimmed by the same retention (the finish script's XADD ... MAXLEN ~).
        for start in range(0, 1000, 100):
            ids = await publish_many(gateway, keys, events[start : start + 100], maxlen)
            await until(partial(audited, ids[-1]))
    assert 100 <= await redis.xlen(keys.audit_stream) < 300
    assert 100 <= await redis.xlen(keys.config_stream) < 300
    store = ConfigStore(gateway, keys, settings.tombstone_ttl_ms)
    assert await store.get("r9") == Limit(1000, 1000)
    assert await pending(redis, keys) == 0


async def test_a_worker_resumes_at_full_speed_after_redis_restarts(prefix: str) -> None:
    """A server restart that lost everything (no persistence) takes the consumer groups
    with it: the worker recreates them, and is as fast as before once Redis is back."""
    server = RedisProcess().start()
    try:
        settings = _settings(server.url, prefix, WORKER_BATCH="10", **FAST)
        keys = KeySpace(prefix)
        door = Gateway(settings)
        client = door.client
        try:
            async with running(settings, "w1"):
                await publish(door, keys, SetLimit(key="before", limit=Limit(1, 1000)), 100)
                await until(lambda: client.xlen(keys.audit_stream))
                server.stop()
                await anyio.sleep(1.0)  # down for a while: the worker's calls fail meanwhile
                server.start()

                async def reachable() -> bool:
                    try:
                        return bool(await client.ping())
                    except RedisConnectionError:  # the pool's old connection, now closed
                        return False

                await until(reachable, seconds=5)
                events: list[KeyEvent] = [
                    SetLimit(key=f"after{i}", limit=Limit(i + 1, 1000)) for i in range(400)
                ]
                await publish_many(door, keys, events, 10_000)
                # 40 batches: far less than the time they would take at a pause per batch.
                await until(
                    lambda: _when(client.xlen(keys.audit_stream), lambda n: n == 400), seconds=8
                )
            store = ConfigStore(door, keys, settings.tombstone_ttl_ms)
            assert await store.get("after399") == Limit(400, 1000)
            assert await pending(client, keys) == 0
        finally:
            await door.aclose()
    finally:
        server.close()


async def test_a_huge_entry_becomes_a_small_dead_letter(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    """Anyone with Redis write access can add an 8 MB entry: its dead letter keeps at most
    16 fields of 4 KiB and says it was cut; GET /dead-letters stays small."""
    settings = _settings(redis_url, prefix)
    keys = KeySpace(prefix)
    huge = {EVENT_FIELD: "x" * 8_000_000, **{f"f{i}": "y" * 10 for i in range(40)}}
    await redis.xadd(keys.config_stream, huge)  # type: ignore[arg-type]
    async with running(settings, "w1"):
        letters = await until(lambda: dead_letters(redis, keys), seconds=15)
    (letter,) = letters
    assert letter.truncated
    assert len(letter.fields) == 16
    assert sum(len(k) + len(v) for k, v in letter.fields.items()) <= 16 * 4096
    assert len(letter.reason) <= 1000
    stored: Any = await redis.xrange(keys.dead_stream)
    assert len(stored[0][1][EVENT_FIELD.encode()]) < 100_000
    await redis.delete(keys.config_stream)  # 8 MB the shared test Redis need not keep
