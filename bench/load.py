"""Load scenarios, their results, and the choice of load tool (wrk or :mod:`bench.loadgen`).

Both tools run as a separate process on loopback, closed-loop: each connection sends a
request, waits for the whole answer, and sends the next (HTTP/1.1 keep-alive), for a
fixed duration.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import random

__all__ = [
    "BATCH",
    "CHECK_ONE",
    "CHECK_RANDOM",
    "HEALTH",
    "HOT_KEY",
    "LoadResult",
    "Scenario",
    "bucket_us",
    "percentile_ms",
    "run_load",
    "wrk_path",
]

HOT_KEY = "bench-hot"


@dataclass(frozen=True)
class Scenario:
    """What each request of a load phase is.

    ``path`` may hold ``{key}``: the key is ``key_prefix`` itself, or with ``keys`` > 0
    ``key_prefix`` followed by a random number from 1 to ``keys`` (a new one per request).
    With ``batch`` > 0 the body is a ``POST /check`` list of that many random keys.
    """

    name: str
    method: str
    path: str
    body: str = ""
    key_prefix: str = ""
    keys: int = 0
    batch: int = 0

    @property
    def checks_per_request(self) -> int:
        if self.batch:
            return self.batch
        return 1 if "/check" in self.path else 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Scenario:
        return cls(**json.loads(text))

    def key(self, rng: random.Random) -> str:
        if self.keys:
            return f"{self.key_prefix}{rng.randint(1, self.keys)}"
        return self.key_prefix

    def batch_body(self, rng: random.Random) -> str:
        items = ",".join(
            f'{{"key":"{self.key_prefix}{rng.randint(1, self.keys)}","tokens":1}}'
            for _ in range(self.batch)
        )
        return f'{{"checks":[{items}],"all_or_nothing":false}}'

    def with_keys(self, keys: int) -> Scenario:
        return Scenario(
            self.name, self.method, self.path, self.body, self.key_prefix, keys, self.batch
        )


HEALTH = Scenario("health", "GET", "/health")
CHECK_ONE = Scenario(
    "check_one", "POST", "/rate-limit/{key}/check", '{"tokens":1}', key_prefix=HOT_KEY
)
CHECK_RANDOM = Scenario(
    "check_random", "POST", "/rate-limit/{key}/check", '{"tokens":1}', "bench-r", 100_000
)
BATCH = Scenario("batch", "POST", "/check", "", "bench-b", 100_000, batch=100)


@dataclass
class LoadResult:
    """One load phase as the load tool saw it. Latencies in milliseconds."""

    scenario: str
    tool: str
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    checks_per_request: int = 0

    @property
    def checks_per_s(self) -> float:
        """Decisions per second: answered 200 or 429, times the items per request."""
        answered = self.statuses.get("200", 0) + self.statuses.get("429", 0)
        return answered * self.checks_per_request / max(self.duration_s, 1e-9)

    @property
    def bad_responses(self) -> int:
        return self.errors + sum(n for s, n in self.statuses.items() if s not in ("200", "429"))

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["checks_per_s"] = round(self.checks_per_s, 1)
        return out


def bucket_us(latency_us: float) -> int:
    """Histogram bucket of a latency: 1 µs wide below 1 ms, then 10, 100, 1000 µs."""
    us = int(latency_us)
    if us < 1_000:
        return us
    if us < 10_000:
        return us - us % 10
    if us < 100_000:
        return us - us % 100
    return us - us % 1_000


def percentile_ms(histogram: dict[int, int], q: float) -> float:
    """The ``q`` quantile (0..1) of a bucket histogram, in ms."""
    total = sum(histogram.values())
    if not total:
        return 0.0
    rank = max(1, round(q * total))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket / 1000
    return max(histogram) / 1000


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_load(
    scenario: Scenario,
    port: int,
    *,
    connections: int,
    duration: float,
    tool: str,
    workdir: str,
) -> LoadResult:
    """Run one phase with ``tool`` ("wrk" or "python") from a separate process."""
    if tool == "wrk":
        from bench.wrk import run_wrk

        result = run_wrk(
            scenario, port, connections=connections, duration=duration, workdir=workdir
        )
    else:
        argv = [
            sys.executable, "-m", "bench.loadgen", "--port", str(port),
            "--scenario", scenario.to_json(), "--connections", str(connections),
            "--duration", str(duration),
        ]  # fmt: skip
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=False,
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
        result = LoadResult(**json.loads(done.stdout))
    result.checks_per_request = scenario.checks_per_request
    return result
