"""Graceful shutdown of real processes under load.

* `throttler serve` gets SIGTERM while hundreds of checks are in flight: every request it
  accepted is answered (200 or 429), it exits 0, and then nothing listens on its port.
* `throttler worker` gets SIGTERM mid-way through a long run of config changes: it finishes
  and acks the batch in hand, exits 0 holding nothing pending, and another worker applies
  the rest.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import msgspec
import pytest

from core.config_store import ConfigStore
from core.keys import APPLIERS, KeySpace
from core.streams import EVENT_FIELD, publish_many
from schemas.events import AuditEvent, ConfigEvent, SetLimit
from schemas.limits import Limit
from tests.support.servers import RedisProcess
from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from redis.asyncio import Redis

    from core.gateway import Gateway

pytestmark = pytest.mark.anyio

REQUESTS = 300
CONNECTIONS = 100


@dataclass
class Outcome:
    sent_at: float | None = None  # when the request was fully written (None: never)
    answered_at: float | None = None
    status: int | None = None
    error: str = ""


async def until(probe: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await probe():
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        await anyio.sleep(0.005)


@pytest.fixture
def paused_redis() -> Iterator[RedisProcess]:
    """A Redis of this test's own, which it pauses (and which is resumed whatever happens)."""
    server = RedisProcess().start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGCONT)
        server.close()


async def test_sigterm_under_load_fails_no_accepted_request(
    paused_redis: RedisProcess, prefix: str, tmp_path: Path
) -> None:
    """300 checks over 100 connections. Once the load runs, Redis is paused for a moment, so
    that checks pile up inside the service waiting for it; SIGTERM arrives then, and Redis
    resumes only after the service has begun shutting down."""
    env = {
        "REDIS_URL": paused_redis.url,
        "KEY_PREFIX": prefix,
        "REDIS_TIMEOUT_MS": "5000",  # the pause must not turn into 503s
        "DEFAULT_CAPACITY": "60",
        "DEFAULT_REFILL_RATE": "1",  # a limit the load exhausts: both 200s and 429s
        "WORKER_BLOCK_MS": "100",
        "WORKER_METRICS_PORT": "0",
    }
    service = ServiceProcess(env).start(tmp_path)
    outcomes = [Outcome() for _ in range(REQUESTS)]
    answered = 0
    signalled_at = float("inf")
    assert paused_redis.proc is not None
    try:
        limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
        async with httpx.AsyncClient(base_url=service.base_url, timeout=20, limits=limits) as http:
            # Open the connections first: the load then runs on accepted connections.
            async with anyio.create_task_group() as tg:
                for _ in range(CONNECTIONS):
                    tg.start_soon(http.get, "/health")

            async def one(i: int) -> None:
                nonlocal answered
                outcome = outcomes[i]

                async def trace(event: str, _info: dict[str, Any]) -> None:
                    if event == "http11.send_request_body.complete":
                        outcome.sent_at = time.monotonic()

                try:
                    resp = await http.post(
                        f"/rate-limit/load-{i % 7}/check", extensions={"trace": trace}
                    )
                except httpx.TransportError as exc:
                    outcome.error = repr(exc)
                else:
                    outcome.status, outcome.answered_at = resp.status_code, time.monotonic()
                    answered += 1

            def sent() -> int:
                return sum(o.sent_at is not None for o in outcomes)

            async with anyio.create_task_group() as tg:
                for i in range(REQUESTS):
                    tg.start_soon(one, i)
                await until(lambda: _at_least(answered, REQUESTS // 10), 10, "first answers")
                paused_redis.proc.send_signal(signal.SIGSTOP)
                backlog = sent() + CONNECTIONS // 2
                await until(lambda: _at_least(sent(), backlog), 10, "checks piling up")
                service.signal(signal.SIGTERM)
                signalled_at = time.monotonic()
                await until(lambda: _logged(service, "Shutting down"), 10, "shutdown to begin")
                paused_redis.proc.send_signal(signal.SIGCONT)
        assert service.proc is not None
        code = service.proc.wait(20)
    finally:
        service.stop()

    accepted = [o for o in outcomes if o.sent_at is not None and o.sent_at < signalled_at]
    in_flight = [o for o in accepted if (o.answered_at or 0) > signalled_at]
    failed = [o for o in accepted if o.status is None]
    refused_late = [o for o in outcomes if o.status is None and o not in failed]
    statuses = Counter(o.status for o in outcomes if o.status is not None)
    # Zero failures among accepted requests; whatever got an answer got a real one.
    assert failed == [], f"{len(failed)} accepted requests failed: {failed[:3]}"
    assert set(statuses) <= {200, 429}, statuses
    # The signal did arrive with work in hand (else this test would prove nothing).
    assert len(in_flight) >= CONNECTIONS // 4, f"only {len(in_flight)} were in flight"
    # Requests sent after the signal may be refused; they are counted, not failed.
    assert sum(statuses.values()) + len(refused_late) == REQUESTS
    assert code == 0, service.log()[-2000:]
    async with httpx.AsyncClient(timeout=2) as fresh:
        with pytest.raises(httpx.ConnectError):
            await fresh.get(f"{service.base_url}/health")
    print(  # for the record (pytest -s): how the load ended
        f"answered={dict(statuses)} refused_after_signal={len(refused_late)} "
        f"accepted_before_signal={len(accepted)} in_flight_at_signal={len(in_flight)}"
    )


async def _at_least(value: int, floor: int) -> bool:
    return value >= floor


async def _logged(service: ServiceProcess, text: str) -> bool:
    return text in service.log()


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its new parent) is not running
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_stop_is_clean_and_stops_the_embedded_server_last(how: str, tmp_path: Path) -> None:
    """SIGTERM to the service, or SIGINT to its whole process group as Ctrl-C in a terminal
    sends it: the in-process worker stops before the embedded server does (which has a
    session of its own, so Ctrl-C does not reach it), nothing is logged at warning level or
    above, and the exit status is 0."""
    env = {"REDIS_URL": "", "WORKER_METRICS_PORT": "0", "WORKER_BLOCK_MS": "100"}
    service = ServiceProcess(env, session=True).start(tmp_path)  # no REDIS_URL: embedded
    embedded: list[int] = []
    try:
        assert service.proc is not None
        embedded = _children(service.proc.pid)
        assert len(embedded) == 1, service.log()
        assert httpx.get(f"{service.base_url}/ready", timeout=5).status_code == 200
        if how == "SIGTERM":
            service.signal(signal.SIGTERM)
        else:
            service.signal_group(signal.SIGINT)
        code = service.proc.wait(20)
        deadline = time.monotonic() + 5
        while _alive(embedded[0]) and time.monotonic() < deadline:
            time.sleep(0.02)
        stopped = not _alive(embedded[0])
    finally:
        service.stop()
        for pid in embedded:  # never leave it behind, whatever the outcome
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert (code, stopped) == (0, True)
    assert service.problems() == []
    log = service.log()
    worker_stopped = re.search(r"worker \S+ stopped", log)
    assert worker_stopped
    assert worker_stopped.start() < log.index("embedded redis stopped")


# --- workers -------------------------------------------------------------------------

CHANGES, KEYS = 6000, 100
_audit = msgspec.json.Decoder(AuditEvent)


def worker(redis_url: str, prefix: str, consumer: str) -> ServiceProcess:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "WORKER_BATCH": "500",
        "WORKER_BLOCK_MS": "200",
        "WORKER_CLAIM_IDLE_MS": "60000",  # nothing is reclaimed: the stop must leave none
        "WORKER_METRICS_PORT": "0",
    }
    return ServiceProcess(env, ["worker", "--consumer", consumer])


async def pending(redis: Redis, keys: KeySpace, consumer: str | None = None) -> int:
    rows: Any = await redis.xpending_range(
        keys.config_stream, APPLIERS, min="-", max="+", count=CHANGES, consumername=consumer
    )
    return len(rows)


async def test_worker_sigterm_mid_way_acks_its_batch_and_leaves_the_rest(
    redis_url: str, redis: Redis, tmp_path: Path, gateway: Gateway
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    keys = KeySpace(prefix)
    events: list[ConfigEvent] = [
        SetLimit(key=f"k{i % KEYS}", limit=Limit(requests=i + 1, window_ms=60_000), actor="stop")
        for i in range(CHANGES)
    ]
    ids = await publish_many(gateway, keys, events, 1_000_000)

    first = worker(redis_url, prefix, "stop-1").start(tmp_path, wait=False)
    second = worker(redis_url, prefix, "stop-2")
    try:

        async def some_applied() -> bool:
            return int(await redis.xlen(keys.audit_stream)) >= CHANGES // 6

        await until(some_applied, 20, "the first worker applying changes")
        first.signal(signal.SIGTERM)
        assert first.proc is not None
        assert first.proc.wait(20) == 0, first.log()[-2000:]
        done_by_first = int(await redis.xlen(keys.audit_stream))
        assert done_by_first < CHANGES, "the worker finished everything before the signal"
        # It acked everything it read: nothing of its own is left pending.
        assert await pending(redis, keys, "stop-1") == 0
        log = first.log()
        assert "finishing the current batch" in log
        assert first.problems() == []
        stopped = re.search(r"worker stop-1 stopped \((\d+) applied\)", log)
        assert stopped, log[-2000:]
        assert int(stopped.group(1)) == done_by_first

        second.start(tmp_path, wait=False)

        async def complete() -> bool:
            audited = int(await redis.xlen(keys.audit_stream)) == CHANGES
            return audited and await pending(redis, keys) == 0

        await until(complete, 30, "the second worker finishing")
        assert second.stop() == 0
    finally:
        first.stop()
        second.stop()

    rows: Any = await redis.xrange(keys.audit_stream)
    records = [_audit.decode(fields[EVENT_FIELD.encode()]) for _, fields in rows]
    assert sorted(r.config_id for r in records) == sorted(ids)  # each exactly once
    by_worker = Counter(r.worker for r in records)
    assert by_worker == {"stop-1": done_by_first, "stop-2": CHANGES - done_by_first}
    assert {r.result for r in records} <= {"created", "replaced"}
    store = ConfigStore(gateway, keys, 1000)
    last = {e.key: e for e in events}
    for key, event in last.items():
        assert isinstance(event, SetLimit)
        assert await store.get(key) == event.limit, key
