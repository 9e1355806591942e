"""Redis memory per active key, per algorithm: ``used_memory`` before and after N keys.

Keys are made by calling the check script itself, pipelined, once per key. Two shapes:

* ``with_limit`` — the check carries the algorithm's inline limit, so the key gets its
  limit hash (``:cfg``) and its state (``:st``), as a key with a limit of its own has;
* ``state_only`` — the algorithm is the default limit, so only the state key is made, as
  for a key that lives on the default limit.

Limits are 100 per 31 days, so no key expires while it is measured. Each run starts
from an empty database (``FLUSHALL`` on the scratch server the benchmark
started for this), so the growth of Redis' own key table is part of the figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from core.keys import KeySpace
from core.limiter import Limiter
from core.scripts import CHECK
from schemas.limits import ALGORITHMS, Limit

__all__ = ["MemoryResult", "measure_memory"]

# 100 per 31 days: every key's state outlives the measurement (a bucket that refills to
# full, a window that ends, lets its key expire, and an expired key is not active).
_WINDOW_MS = 2_678_400_000
_LIMITS: dict[str, Limit] = {
    name: Limit(requests=100, window_ms=_WINDOW_MS, algorithm=name) for name in ALGORITHMS
}


@dataclass
class MemoryResult:
    algorithm: str
    shape: str  # with_limit | state_only
    keys: int
    bytes_per_key: float
    cfg_bytes: int  # MEMORY USAGE of one sample limit hash (0 when none)
    state_bytes: int  # MEMORY USAGE of one sample state key
    redis_keys: int  # DBSIZE after: keys (x2 with a limit) when none expired
    seconds: float


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _sample(client: redis.Redis, key: str) -> int:
    value = client.memory_usage(key, samples=0)
    return int(value) if value is not None else 0


def _fill(client: redis.Redis, limit: Limit, shape: str, keys: int, batch: int) -> KeySpace:
    """Make ``keys`` active keys; returns the key space used."""
    space = KeySpace(f"mem-{limit.algorithm}")
    default = limit if shape == "state_only" else _LIMITS["token_bucket"]
    limiter = Limiter(client, space, default)  # type: ignore[arg-type]  # script_args only
    inline = limit if shape == "with_limit" else None
    for start in range(0, keys, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + batch, keys)):
            names, args = limiter.script_args(f"k{i}", 1, inline)
            pipe.evalsha(CHECK.sha, 2, *names, *args)
        pipe.execute()
    return space


def measure_memory(url: str, keys: int, batch: int = 1000) -> list[MemoryResult]:
    """Every algorithm in both shapes (state_only only for the bucket and GCRA)."""
    client = redis.Redis.from_url(url)
    try:
        client.script_load(CHECK.source)
        results = []
        for algorithm in ALGORITHMS:
            limit = _LIMITS[algorithm]
            shapes = ["with_limit"]
            if algorithm in ("token_bucket", "gcra"):
                shapes.append("state_only")
            for shape in shapes:
                client.flushall()
                client.script_load(CHECK.source)
                client.memory_purge()
                before = _used(client)
                started = time.perf_counter()
                space = _fill(client, limit, shape, keys, batch)
                seconds = time.perf_counter() - started
                after = _used(client)
                cfg = _sample(client, space.config("k0")) if shape == "with_limit" else 0
                results.append(
                    MemoryResult(
                        algorithm=algorithm,
                        shape=shape,
                        keys=keys,
                        bytes_per_key=round((after - before) / keys, 1),
                        cfg_bytes=cfg,
                        state_bytes=_sample(client, space.state("k0")),
                        redis_keys=int(client.dbsize()),
                        seconds=round(seconds, 2),
                    )
                )
        client.flushall()
        return results
    finally:
        client.close()
