"""Config changes: propagation to another API process, and the bulk apply rate."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from bench.load import percentile_ms
from bench.loadgen import Connection, build_request
from bench.procs import ROOT, service_env
from core.keys import KeySpace
from core.streams import EVENT_FIELD

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["BulkResult", "PropagationResult", "measure_bulk_apply", "measure_propagation"]


@dataclass
class PropagationResult:
    """Time from sending ``POST /rate-limit/{key}`` to process A until a check on process B
    (polled back to back, one connection) answers with the new limit; and the POST's own
    latency (it returns once a worker applied the change)."""

    changes: int
    timeouts: int
    visible_p50_ms: float
    visible_p99_ms: float
    visible_max_ms: float
    post_p50_ms: float
    post_p99_ms: float
    polls_per_change: float
    # from the audit entries: submitted (API) -> applied (worker), 1 ms grain
    stream_to_applied_p50_ms: float = 0.0
    stream_to_applied_p99_ms: float = 0.0


def _ms_histogram(values: list[float]) -> dict[int, int]:
    histogram: dict[int, int] = {}
    for value in values:
        us = int(value * 1e6)
        histogram[us] = histogram.get(us, 0) + 1
    return histogram


async def _propagation(
    port_a: int, port_b: int, changes: int, timeout_s: float, run: str
) -> PropagationResult:
    poster, poller = Connection(port_a), Connection(port_b)
    visible: list[float] = []
    posts: list[float] = []
    polls = timeouts = 0
    try:
        for i in range(changes):
            key = f"{run}-{i}"
            want = 1000 + i
            body = json.dumps({"requests": want, "window_ms": 60_000})
            post = build_request("POST", f"/rate-limit/{key}", body)
            peek = build_request("POST", f"/rate-limit/{key}/check", '{"tokens":0}')
            started = time.perf_counter()
            sent = asyncio.create_task(poster.request(post))
            seen = None
            while time.perf_counter() - started < timeout_s:
                status, answer = await poller.request(peek)
                polls += 1
                if status == 200 and json.loads(answer).get("limit") == want:
                    seen = time.perf_counter() - started
                    break
            status, answer = await sent
            posts.append(time.perf_counter() - started)
            if status not in (200, 201):
                raise RuntimeError(f"POST /rate-limit/{key} answered {status}: {answer[:200]!r}")
            if seen is None:
                timeouts += 1
            else:
                visible.append(seen)
    finally:
        await poster.close()
        await poller.close()
    vis, pst = _ms_histogram(visible), _ms_histogram(posts)
    return PropagationResult(
        changes=changes,
        timeouts=timeouts,
        visible_p50_ms=percentile_ms(vis, 0.5),
        visible_p99_ms=percentile_ms(vis, 0.99),
        visible_max_ms=max(vis, default=0) / 1000,
        post_p50_ms=percentile_ms(pst, 0.5),
        post_p99_ms=percentile_ms(pst, 0.99),
        polls_per_change=round(polls / max(changes, 1), 1),
    )


def measure_propagation(
    redis_url: str, port_a: int, port_b: int, changes: int, timeout_s: float = 5.0
) -> PropagationResult:
    run = f"bench-prop-{time.time_ns()}"
    client = redis.Redis.from_url(redis_url)
    keys = KeySpace("throttler")
    try:
        audit_before = _last_id(client, keys.audit_stream)
        result = asyncio.run(_propagation(port_a, port_b, changes, timeout_s, run))
        delays = []
        rows: Any = client.xrange(keys.audit_stream, min=f"({audit_before}")
        for _, fields in rows:
            event = json.loads(fields.get(EVENT_FIELD.encode(), b"{}"))
            if str(event.get("key", "")).startswith(run):
                delays.append(event["applied_at_ms"] - event["submitted_at_ms"])
    finally:
        client.close()
    histogram = _ms_histogram([d / 1000 for d in delays])
    result.stream_to_applied_p50_ms = percentile_ms(histogram, 0.5)
    result.stream_to_applied_p99_ms = percentile_ms(histogram, 0.99)
    return result


@dataclass
class BulkResult:
    """``throttler apply FILE --wait`` as a real process.

    ``wall_*``: from starting the process until it exited (interpreter start, parsing and
    validating the file included). ``pipeline_*``: from the first entry on the config
    stream to the last outcome on the audit stream (Redis entry-id times, 1 ms grain), i.e.
    publishing and applying only.
    """

    changes: int
    exit_code: int
    wall_s: float
    wall_changes_per_s: float
    publish_changes_per_s: float
    pipeline_s: float
    pipeline_changes_per_s: float
    applied: int
    audit_entries: int
    workers: dict[str, int]  # consumer -> changes it applied
    output: str


def _last_id(client: redis.Redis, stream: str) -> str:
    rows: Any = client.xrevrange(stream, count=1)
    return str(rows[0][0].decode()) if rows else "0-0"


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", maxsplit=1)[0])


def measure_bulk_apply(redis_url: str, changes: int, workdir: Path) -> BulkResult:
    keys = KeySpace("throttler")
    run = int(time.time())
    items = [
        {"key": f"bench-bulk-{run}-{i}", "requests": 100 + i % 1000, "window_ms": 60_000}
        for i in range(changes)
    ]
    path = workdir / "bulk.json"
    path.write_text(json.dumps(items))
    client = redis.Redis.from_url(redis_url)
    try:
        config_before = _last_id(client, keys.config_stream)
        audit_before = _last_id(client, keys.audit_stream)
        argv = [sys.executable, "-m", "throttler", "apply", str(path), "--wait", "--timeout", "120"]
        started = time.perf_counter()
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            cwd=ROOT,
            env={**_environ(), **service_env(redis_url)},
            start_new_session=True,
        )
        wall = time.perf_counter() - started
        published: Any = client.xrange(keys.config_stream, min=f"({config_before}", count=1)
        audits: Any = client.xrange(keys.audit_stream, min=f"({audit_before}", count=changes + 100)
        first = _ms(published[0][0].decode()) if published else 0
        last = _ms(audits[-1][0].decode()) if audits else first
        workers: dict[str, int] = {}
        for _, fields in audits:
            event = json.loads(fields.get(EVENT_FIELD.encode(), b"{}"))
            name = str(event.get("worker", "?"))
            workers[name] = workers.get(name, 0) + 1
    finally:
        client.close()
    out = done.stdout + done.stderr
    publish_rate = 0.0
    applied = 0
    for line in done.stdout.splitlines():
        if line.startswith("published") and "/s)" in line:
            publish_rate = float(line.split("(")[1].split("/s")[0].replace(",", ""))
        if line.startswith("applied "):
            applied = int(line.split()[1].rstrip(","))
    pipeline = max(last - first, 1) / 1000
    return BulkResult(
        changes=changes,
        exit_code=done.returncode,
        wall_s=round(wall, 3),
        wall_changes_per_s=round(changes / wall, 1),
        publish_changes_per_s=publish_rate,
        pipeline_s=round(pipeline, 3),
        pipeline_changes_per_s=round(changes / pipeline, 1),
        applied=applied,
        audit_entries=len(audits),
        workers=workers,
        output=done.stdout.strip().splitlines()[-1] if done.stdout.strip() else out[-300:],
    )


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)
