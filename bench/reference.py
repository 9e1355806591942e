"""Reference points: Redis alone running the check script, and the ``limits`` library.

* ``redis-benchmark`` sends ``EVALSHA`` of the very check script (the one ``CHECK.sha``
  names), unpipelined and pipelined 64 deep: what Redis itself can decide per second.
* ``limits`` (its redis-py storage) makes the same decisions in-process — fixed window and
  moving (sliding-log) window at the same limit — against our :class:`core.limiter.Limiter`
  in-process, sequentially and with concurrent tasks (where auto-pipelining works).
"""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis

from bench.redisstats import snapshot
from core.breaker import CircuitBreaker
from core.keys import KeySpace
from core.limiter import Limiter
from core.metrics import Metrics
from core.redis_client import connect
from core.scripts import CHECK
from core.settings import Settings
from schemas.limits import Algorithm, Limit

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = [
    "InprocResult",
    "RedisBenchResult",
    "decisions_agree",
    "limits_version",
    "measure_inprocess",
    "redis_benchmark",
]

KEYSPACE = 10_000  # distinct keys cycled through by the in-process loops
REQUESTS, WINDOW_MS = 100, 60_000  # the limit both libraries enforce (100 per minute)


@dataclass
class RedisBenchResult:
    keys: str  # one | random
    pipeline: int
    clients: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    script_us_per_call: float  # Redis-side time per EVALSHA (INFO commandstats)


def redis_benchmark(
    port: int, requests: int, pipelines: tuple[tuple[int, int], ...] = ((1, 50), (64, 8))
) -> list[RedisBenchResult]:
    """EVALSHA of the check script with redis-benchmark: one key and 100,000 random keys,
    for each (pipeline depth, clients) of ``pipelines``."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return []
    client = redis.Redis(port=port)
    try:
        client.script_load(CHECK.source)
        results = []
        for keys in ("one", "random"):
            if keys == "one":  # a stored-less key on a huge limit: always allowed
                names = ["bench:{hot}:cfg", "bench:{hot}:st"]
                limit = ["1", "1000000000", "1000", "0"]
                extra: list[str] = []
            else:  # like a check on a random key living on the default limit
                names = ["bench:{__rand_int__}:cfg", "bench:{__rand_int__}:st"]
                limit = ["1", "10", "1000", "100"]  # DEFAULT_CAPACITY 100, 10/s
                extra = ["-r", "100000"]
            for depth, clients in pipelines:
                argv = [
                    tool, "-h", "127.0.0.1", "-p", str(port), "-n", str(requests),
                    "-c", str(clients), "-P", str(depth), *extra, "--csv",
                    "EVALSHA", CHECK.sha, "2", *names, "1", "d", "", *limit,
                ]  # fmt: skip
                before = snapshot(client)
                done = subprocess.run(
                    argv, capture_output=True, text=True, timeout=300, check=False,
                    start_new_session=True,
                )  # fmt: skip
                delta = snapshot(client) - before
                rows = list(csv.DictReader(io.StringIO(done.stdout)))
                if done.returncode != 0 or not rows:
                    raise RuntimeError(f"redis-benchmark failed: {done.stdout}{done.stderr}")
                row = rows[-1]
                results.append(
                    RedisBenchResult(
                        keys=keys,
                        pipeline=depth,
                        clients=clients,
                        requests=requests,
                        rps=float(row["rps"]),
                        p50_ms=float(row["p50_latency_ms"]),
                        p99_ms=float(row["p99_latency_ms"]),
                        script_us_per_call=round(
                            delta.evalsha_usec / max(delta.evalsha_calls, 1), 2
                        ),
                    )
                )
        return results
    finally:
        client.close()


@dataclass
class InprocResult:
    library: str  # throttler | limits
    algorithm: str  # as named by the library
    call: str  # what was awaited or called
    concurrency: int
    checks: int
    seconds: float
    checks_per_s: float
    checks_per_round_trip: float


def limits_version() -> str:
    try:
        return version("limits")
    except PackageNotFoundError:
        return ""


def _limiter(url: str, algorithm: str) -> Limiter:
    settings = Settings(redis_url=url)
    metrics = Metrics()
    breaker = CircuitBreaker(
        settings.breaker_failures, settings.breaker_cooldown_ms / 1000, metrics
    )
    default = Limit(requests=100, window_ms=10_000, burst=100)
    return Limiter(connect(settings), KeySpace(f"inproc-{algorithm}"), default, metrics, breaker)


async def _drive(
    call: Callable[[str], Awaitable[Any]], concurrency: int, seconds: float, prefix: str
) -> tuple[int, float]:
    keys = [f"{prefix}{i}" for i in range(KEYSPACE)]
    done = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def task(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < deadline:
            await call(keys[i % KEYSPACE])
            i += 7
            done += 1

    await asyncio.gather(*(task(n * 997) for n in range(concurrency)))
    return done, time.perf_counter() - started


async def _ours(url: str, algorithm: Algorithm, concurrency: int, seconds: float) -> InprocResult:
    limiter = _limiter(url, algorithm)
    inline = Limit(requests=REQUESTS, window_ms=WINDOW_MS, algorithm=algorithm)
    try:
        await limiter.check("warm", 1, inline)
        trips = limiter.round_trips
        checks, elapsed = await _drive(
            lambda key: limiter.check(key, 1, inline), concurrency, seconds, algorithm
        )
        trips = limiter.round_trips - trips
    finally:
        await limiter._redis.aclose()
    return InprocResult(
        "throttler", algorithm, "await Limiter.check()", concurrency, checks,
        round(elapsed, 3), round(checks / elapsed, 1), round(checks / max(trips, 1), 2),
    )  # fmt: skip


def _limits_sync(url: str, strategy: str, seconds: float) -> InprocResult:
    from limits import RateLimitItemPerMinute, storage, strategies

    store = storage.RedisStorage(url)
    limiter = getattr(strategies, strategy)(store)
    item = RateLimitItemPerMinute(REQUESTS)
    keys = [f"{strategy}{i}" for i in range(KEYSPACE)]
    limiter.hit(item, f"warm-{strategy}")
    checks, i = 0, 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        limiter.hit(item, keys[i % KEYSPACE])
        i += 7
        checks += 1
    elapsed = time.perf_counter() - started
    return InprocResult(
        "limits", strategy, "hit() (sync redis-py)", 1, checks,
        round(elapsed, 3), round(checks / elapsed, 1), 1.0,
    )  # fmt: skip


async def _limits_async(url: str, strategy: str, concurrency: int, seconds: float) -> InprocResult:
    from limits import RateLimitItemPerMinute
    from limits.aio import storage, strategies

    store = storage.RedisStorage(
        url.replace("redis://", "async+redis://"), implementation="redispy"
    )
    limiter = getattr(strategies, strategy)(store)
    item = RateLimitItemPerMinute(REQUESTS)
    await limiter.hit(item, f"warm-{strategy}")
    checks, elapsed = await _drive(
        lambda key: limiter.hit(item, key), concurrency, seconds, strategy
    )
    return InprocResult(
        "limits", strategy, "await hit() (asyncio redis-py)", concurrency, checks,
        round(elapsed, 3), round(checks / elapsed, 1), 1.0,
    )  # fmt: skip


def _resp(*args: str | int) -> bytes:
    """One command in RESP, the Redis wire format."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def _raw(port: int, depth: int, seconds: float) -> InprocResult:
    """The floor for a Python asyncio client: EVALSHA of the check script written as bytes
    on an asyncio stream and parsed by hiredis, ``depth`` calls per round trip."""
    import hiredis

    space = KeySpace("raw")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parser = hiredis.Reader()
    checks = trips = 0
    i = 0
    started = time.perf_counter()
    deadline = started + seconds
    try:
        while time.perf_counter() < deadline:
            batch = []
            for _ in range(depth):
                key = f"k{i % KEYSPACE}"
                i += 7
                batch.append(
                    _resp("EVALSHA", CHECK.sha, 2, space.config(key), space.state(key),
                          1, "d", "", 1, 10, 1000, 100)
                )  # fmt: skip
            writer.write(b"".join(batch))
            replies = 0
            while replies < depth:
                parser.feed(await reader.read(65536))
                while (reply := parser.gets()) is not False:
                    if isinstance(reply, hiredis.ReplyError):
                        raise RuntimeError(f"EVALSHA failed: {reply}")
                    replies += 1
            checks += depth
            trips += 1
    finally:
        writer.close()
        await writer.wait_closed()
    elapsed = time.perf_counter() - started
    return InprocResult(
        "raw asyncio + hiredis", "token_bucket", "EVALSHA bytes on a stream (no client library)",
        depth, checks, round(elapsed, 3), round(checks / elapsed, 1), round(checks / trips, 1),
    )  # fmt: skip


_PAIRS: tuple[tuple[Algorithm, str], ...] = (
    ("fixed_window", "FixedWindowRateLimiter"),
    ("sliding_window", "MovingWindowRateLimiter"),
)


def measure_inprocess(url: str, seconds: float, concurrency: int = 64) -> list[InprocResult]:
    """Each pair of equivalent algorithms, sequential and concurrent."""
    have_limits = bool(limits_version())
    port = urlsplit(url).port or 6379
    client = redis.Redis.from_url(url)
    try:
        client.script_load(CHECK.source)
    finally:
        client.close()
    results = [asyncio.run(_raw(port, depth, seconds)) for depth in (1, concurrency)]
    for ours, theirs in _PAIRS:
        results.extend(asyncio.run(_ours(url, ours, n, seconds)) for n in (1, concurrency))
        if have_limits:
            results.append(_limits_sync(url, theirs, seconds))
            results.append(asyncio.run(_limits_async(url, theirs, concurrency, seconds)))
    return results


async def _our_decisions(url: str, algorithm: Algorithm, key: str, hits: int) -> list[bool]:
    limiter = _limiter(url, algorithm)
    inline = Limit(requests=5, window_ms=WINDOW_MS, algorithm=algorithm)
    try:
        return [(await limiter.check(key, 1, inline)).allowed for _ in range(hits)]
    finally:
        await limiter._redis.aclose()


def decisions_agree(url: str) -> dict[str, bool]:
    """Eight checks against a limit of 5 per minute on a fresh key: both must admit five."""
    if not limits_version():
        return {}
    from limits import RateLimitItemPerMinute, storage, strategies

    store = storage.RedisStorage(url)
    out = {}
    for ours, theirs in _PAIRS:
        agree = False
        for attempt in range(3):  # a fixed window may roll over mid-way: try again
            key = f"agree-{ours}-{time.time_ns()}-{attempt}"
            mine = asyncio.run(_our_decisions(url, ours, key, 8))
            limiter = getattr(strategies, theirs)(store)
            item = RateLimitItemPerMinute(5)
            their = [limiter.hit(item, key) for _ in range(8)]
            if mine == their == [True] * 5 + [False] * 3:
                agree = True
                break
        out[f"{ours} = {theirs}"] = agree
    return out
