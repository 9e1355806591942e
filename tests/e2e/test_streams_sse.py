"""Limit-change notifications as Server-Sent Events from a real `throttler serve` process
(what `curl -N http://host/notifications?prefix=free:` shows)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx

from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

LIMIT = {"requests": 10, "window_ms": 60000, "algorithm": "token_bucket", "burst": 10}


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Parse the SSE wire format: ``field: value`` lines, one event per blank line."""
    event: dict[str, str] = {}
    for line in lines:
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):  # ":" starts a comment (keep-alive)
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


def test_sse_delivers_limit_changes_for_a_prefix(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "WORKER_METRICS_PORT": "0"}
    service = ServiceProcess(env, ["serve"]).start(tmp_path)
    try:
        base = service.base_url
        timeout = httpx.Timeout(10.0)
        with (
            httpx.Client(base_url=base, timeout=timeout) as api,
            httpx.Client(base_url=base, timeout=timeout) as listener,
            listener.stream("GET", "/notifications", params={"prefix": "free:"}) as stream,
        ):
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = sse_events(stream.iter_lines())
            # Once subscribed, nothing published from now on can be missed.
            assert next(events) == {"event": "subscribed", "data": '{"prefix":"free:"}'}

            assert api.post("/rate-limit/pro:sse-1", json=LIMIT).status_code == 201
            created = api.post("/rate-limit/free:sse-1", json=LIMIT)
            assert created.status_code == 201, created.text
            assert api.delete("/rate-limit/free:sse-1").status_code == 200

            first, second = next(events), next(events)  # pro:sse-1 was filtered out
        assert first["event"] == "limit_changed"
        note = json.loads(first["data"])
        assert first["id"] == note["event_id"]
        assert (note["type"], note["key"], note["result"]) == (
            "limit_changed",
            "free:sse-1",
            "created",
        )
        assert (note["limit"], note["before"]) == (LIMIT, None)
        deleted = json.loads(second["data"])
        assert (deleted["key"], deleted["result"]) == ("free:sse-1", "deleted")
        assert (deleted["limit"], deleted["before"]) == (None, LIMIT)
        assert deleted["event_id"] > note["event_id"]
    finally:
        service.stop()


def test_a_keep_alive_is_a_comment_line_and_nothing_else(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """A browser's EventSource fires `onmessage` for any event with a `data:` line, even an
    empty one: a keep-alive must be a comment alone, or `JSON.parse(e.data)` throws."""
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "WORKER_METRICS_PORT": "0",
        "SSE_KEEPALIVE_MS": "100",
    }
    service = ServiceProcess(env, ["serve"]).start(tmp_path)
    try:
        with (
            httpx.Client(base_url=service.base_url, timeout=httpx.Timeout(10.0)) as listener,
            listener.stream("GET", "/notifications") as stream,
        ):
            received = b""
            chunks = stream.iter_raw()
            while received.count(b": keep-alive") < 2:
                received += next(chunks)
    finally:
        service.stop()
    subscribed, _, rest = received.partition(b"\r\n\r\n")
    assert subscribed == b'event: subscribed\r\ndata: {"prefix":""}'
    events = [e for e in rest.split(b"\r\n\r\n") if e]
    assert events[:2] == [b": keep-alive", b": keep-alive"]
