"""The config path end to end in one process, on a real Redis (DESIGN.md §3).

POST → config stream → worker → applied → GET → audit record → notification on the
WebSocket and on Redis Pub/Sub; the 202 path when no worker runs; one trace from the HTTP
request through the worker's apply and audit spans.

The test client runs the app (and its in-process worker) in a thread of its own, and a
request blocks the test's event loop until it is answered; a Worker started by a test runs
in the test's loop.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from core.keys import APPLIERS, KeySpace
from core.settings import Settings, load_settings
from core.streams import EVENT_FIELD
from core.telemetry import Telemetry
from schemas.events import AuditEvent, LimitChanged, config_event_decoder
from tests.support.poll import until
from tests.support.worker import running_worker
from throttler.cli import build_app

if TYPE_CHECKING:
    from litestar import Litestar
    from redis.asyncio import Redis

    Client = AsyncTestClient[Litestar]

pytestmark = pytest.mark.anyio

LIMIT = {"requests": 10, "window_ms": 60000, "algorithm": "token_bucket", "burst": 10}
_audit = msgspec.json.Decoder(AuditEvent)
_note = msgspec.json.Decoder(LimitChanged)
T = TypeVar("T")


async def audit_of(redis: Redis, keys: KeySpace, config_id: str) -> AuditEvent | None:
    rows: Any = await redis.xrange(keys.audit_stream)
    for _, fields in rows:
        record = _audit.decode(fields[EVENT_FIELD.encode()])
        if record.config_id == config_id:
            return record
    return None


def _settings(redis_url: str, prefix: str, **extra: str) -> Settings:
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, **extra}
    return load_settings(env, env_file=None)


def _receive(ws: Any) -> LimitChanged:
    return _note.decode(ws.receive_text(timeout=5.0))


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    span_id: int = span.context.span_id
    return span_id


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_round_trip_post_apply_get_audit_notify(
    client: Client, redis: Redis, keys: KeySpace
) -> None:
    ws = await client.websocket_connect("/notifications/ws?prefix=free:")
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.notify_channel)
    try:
        with ws:
            assert ws.receive_json(timeout=5.0) == {"type": "subscribed", "prefix": "free:"}
            # Another prefix first: the WebSocket must skip it and deliver only free:*.
            other = await client.post("/rate-limit/pro:rt-1", json={"requests": 1, "window_ms": 5})
            assert other.status_code == 201
            created = await client.post("/rate-limit/free:rt-1", json=LIMIT)
            assert created.status_code == 201, created.text
            assert created.json() == LIMIT
            note = _receive(ws)
            assert (note.key, note.result, note.before) == ("free:rt-1", "created", None)
            assert msgspec.to_builtins(note.limit) == LIMIT

            got = await client.get("/rate-limit/free:rt-1")
            assert got.status_code == 200
            assert {k: got.json()[k] for k in LIMIT} == LIMIT

            replaced = await client.post("/rate-limit/free:rt-1", json={**LIMIT, "requests": 20})
            assert replaced.status_code == 200
            note2 = _receive(ws)
            assert note2.result == "replaced"
            deleted = await client.delete("/rate-limit/free:rt-1")
            assert deleted.status_code == 200
            assert deleted.json() == {**LIMIT, "requests": 20}
            note3 = _receive(ws)
            assert (note3.result, note3.limit) == ("deleted", None)
            assert (await client.get("/rate-limit/free:rt-1")).json()["source"] == "default"
            ids = [note.event_id, note2.event_id, note3.event_id]
            assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))

        # The config entry the API published: the event, its actor and its traceparent field.
        rows: Any = await redis.xrange(keys.config_stream, min=note.event_id, max=note.event_id)
        event = config_event_decoder.decode(rows[0][1][EVENT_FIELD.encode()])
        assert (event.key, event.actor) == ("free:rt-1", "http:testclient (no token)")
        assert len(event.request_id) == 32
        assert note.request_id == event.request_id

        # Exactly one audit record per change, with before / after / result / actor.
        audits = [await until(partial(audit_of, redis, keys, i), 10.0) for i in ids]
        limit_20 = {**LIMIT, "requests": 20}
        assert [
            (a.result, msgspec.to_builtins(a.before), msgspec.to_builtins(a.after)) for a in audits
        ] == [("created", None, LIMIT), ("replaced", LIMIT, limit_20), ("deleted", limit_20, None)]
        for audit in audits:
            assert (audit.key, audit.actor) == ("free:rt-1", "http:testclient (no token)")
            assert audit.type == ("delete_limit" if audit.result == "deleted" else "set_limit")
            assert audit.applied_at_ms >= audit.submitted_at_ms > 0
            assert audit.worker
        assert await redis.xlen(keys.audit_stream) == 4  # and one for pro:rt-1

        # The same notifications on the documented Pub/Sub channel, with every key.
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while len(seen) < 4 and time.monotonic() < deadline:
            # None also stands for the subscribe confirmation, which is skipped.
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                seen.append(json.loads(message["data"]))
        assert [(n["type"], n["key"], n["result"]) for n in seen] == [
            ("limit_changed", "pro:rt-1", "created"),
            ("limit_changed", "free:rt-1", "created"),
            ("limit_changed", "free:rt-1", "replaced"),
            ("limit_changed", "free:rt-1", "deleted"),
        ]
        assert set(seen[1]) == {
            "type",
            "event_id",
            "key",
            "result",
            "limit",
            "before",
            "request_id",
            "applied_at_ms",
            # issue 10: a key's limits when it has several
            "limits",
            "shadow",
            "before_limits",
            "before_shadow",
        }
        pending: Any = await redis.xpending(keys.config_stream, APPLIERS)
        assert pending["pending"] == 0
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_websocket_without_prefix_gets_every_key(client: Client) -> None:
    with await client.websocket_connect("/notifications/ws") as ws:
        assert ws.receive_json(timeout=5.0) == {"type": "subscribed", "prefix": ""}
        assert (await client.post("/rate-limit/a:1", json=LIMIT)).status_code == 201
        assert (await client.post("/rate-limit/b:1", json=LIMIT)).status_code == 201
        assert [_receive(ws).key, _receive(ws).key] == ["a:1", "b:1"]


async def test_no_worker_answers_202_and_a_later_worker_applies(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    settings = _settings(redis_url, prefix, APPLY_WAIT_MS="200")
    keys = KeySpace(prefix)
    async with AsyncTestClient(app=build_app(settings, worker=False)) as client:
        started = time.monotonic()
        answer = await client.post("/rate-limit/late:1", json=LIMIT)
        assert time.monotonic() - started < 3
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert set(body) == {"status", "event_id"}
        assert body["status"] == "accepted"
        event_id = body["event_id"]
        removed = await client.delete("/rate-limit/late:2")
        assert removed.status_code == 202
        # Not applied, but on the stream: nothing is lost.
        assert (await client.get("/rate-limit/late:1")).json()["source"] == "default"
        rows: Any = await redis.xrange(keys.config_stream, min=event_id, max=event_id)
        assert config_event_decoder.decode(rows[0][1][EVENT_FIELD.encode()]).key == "late:1"

        async with running_worker(settings, "late-worker"):
            audit = await until(lambda: audit_of(redis, keys, event_id), 10.0)
        assert (audit.result, audit.worker) == ("created", "late-worker")
        assert (await audit_of(redis, keys, removed.json()["event_id"])) is not None
        got = await client.get("/rate-limit/late:1")
        assert got.status_code == 200
        assert {k: got.json()[k] for k in LIMIT} == LIMIT


async def test_one_trace_from_request_through_apply_and_audit(
    settings: Settings, redis: Redis, keys: KeySpace
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = build_app(settings, telemetry=Telemetry(provider))
    async with AsyncTestClient(app=app) as client:
        answer = await client.post("/rate-limit/traced:1", json=LIMIT)
        assert answer.status_code == 201

        def audited() -> Any:
            spans = exporter.get_finished_spans()
            return spans if any(s.name == "audit set_limit" for s in spans) else None

        async def audited_async() -> Any:
            return audited()

        spans = await until(audited_async, 10.0)
    provider.shutdown()
    by_name = {s.name: s for s in spans}
    send = by_name[f"send {keys.config_stream}"]
    process = by_name[f"process {keys.config_stream}"]
    apply = by_name["apply limit change"]
    audit = by_name["audit set_limit"]
    assert send.kind == SpanKind.PRODUCER
    assert process.kind == SpanKind.CONSUMER
    assert audit.kind == SpanKind.CONSUMER
    trace_ids = {s.context.trace_id for s in (send, process, apply, audit) if s.context}
    assert len(trace_ids) == 1
    # Parent chain: send ← process ← apply ← audit.
    assert _parent_id(process) == _span_id(send)
    assert _parent_id(apply) == _span_id(process)
    assert _parent_id(audit) == _span_id(apply)
    assert process.attributes is not None
    assert process.attributes["messaging.consumer.group.name"] == APPLIERS
    assert apply.attributes is not None
    assert apply.attributes["throttler.result"] == "created"
    # The HTTP server span (when the API traces requests) is the root of the same trace.
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    if servers:
        (server,) = servers
        assert server.context is not None
        assert server.context.trace_id in trace_ids
        assert _parent_id(send) == _span_id(server)
        assert server.parent is None
    else:
        assert send.parent is None
    # The audit record carries the traceparent of the apply span.
    assert apply.context is not None
    config_id = str(process.attributes["messaging.message.id"])
    record = await until(lambda: audit_of(redis, keys, config_id), 10.0)
    assert record.traceparent == (
        f"00-{apply.context.trace_id:032x}-{apply.context.span_id:016x}-"
        f"{apply.context.trace_flags:02x}"
    )
