"""Redis fails under a running `throttler serve` process while checks stream in.

Each test runs a real service on a Redis of its own (REDIS_TIMEOUT_MS=200,
BREAKER_FAILURES=3, BREAKER_COOLDOWN_MS=500), keeps concurrent checks and readiness probes
flowing, and then kills, pauses, restarts or flushes that Redis. What is asserted is what a
client sees: prompt answers (never a hang), the failure policy's answer while Redis is gone,
the truth from /ready, recovery without a service restart, and the degraded decisions
counted in /metrics.
"""

from __future__ import annotations

import signal
import statistics
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from tests.support.servers import RedisProcess

pytestmark = pytest.mark.anyio

TIMEOUT_MS = 200
COOLDOWN_MS = 500
PROMPT_S = 4.0  # no request may take longer, whatever Redis does (a stall is the 10 s client
# timeout; the margin over REDIS_TIMEOUT_MS is for a loaded 2-core machine)
RECOVERY_S = 2.0  # checks succeed again this soon after Redis is back
CONCURRENCY = 8
DAY_MS = 86_400_000


@dataclass
class Sample:
    started: float
    ended: float
    status: int | None  # None: no response (connection error, timeout)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def took(self) -> float:
        return self.ended - self.started


class Traffic:
    """Requests sent in loops by concurrent tasks until stopped; every answer is kept."""

    def __init__(self, http: httpx.AsyncClient, method: str, path: str, tasks: int) -> None:
        self.http, self.method, self.path, self.tasks = http, method, path, tasks
        self.samples: list[Sample] = []
        self._stop = anyio.Event()

    async def _loop(self, pause_s: float) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                resp = await self.http.request(self.method, self.path)
            except httpx.HTTPError as exc:
                self.samples.append(Sample(began, time.monotonic(), None, error=repr(exc)))
            else:
                body = (
                    resp.json()
                    if resp.headers.get("content-type", "").startswith("application/json")
                    else resp.text
                )
                self.samples.append(
                    Sample(began, time.monotonic(), resp.status_code, body, dict(resp.headers))
                )
            if pause_s:
                await anyio.sleep(pause_s)

    @asynccontextmanager
    async def running(self, pause_s: float = 0.0) -> AsyncIterator[Traffic]:
        async with anyio.create_task_group() as tg:
            for _ in range(self.tasks):
                tg.start_soon(self._loop, pause_s)
            try:
                yield self
            finally:
                self._stop.set()

    def between(self, start: float, end: float = float("inf")) -> list[Sample]:
        """The samples sent at or after ``start`` and answered by ``end``."""
        return [s for s in self.samples if s.started >= start and s.ended <= end]

    async def wait_for(
        self, condition: Callable[[Sample], bool], count: int, after: float, within: float
    ) -> float:
        """Wait until ``count`` samples sent after ``after`` meet ``condition``; returns when
        the first of them was answered."""
        deadline = time.monotonic() + within
        while True:
            hits = [s for s in self.samples if s.started >= after and condition(s)]
            if len(hits) >= count:
                return min(s.ended for s in hits)
            assert time.monotonic() < deadline, (
                f"{count} matching answers to {self.path} not seen within {within} s; "
                f"last: {self.samples[-3:]}"
            )
            await anyio.sleep(0.01)


def is_ok(sample: Sample) -> bool:
    return sample.status == 200


def is_unavailable(sample: Sample) -> bool:
    return sample.status == 503


def assert_redis_unavailable(sample: Sample) -> None:
    assert sample.status == 503, sample
    assert sample.body == {
        "error": "redis_unavailable",
        "message": "the rate-limit store (Redis) is unavailable; retry shortly",
    }
    assert int(sample.headers["retry-after"]) >= 1


def assert_not_enforced(sample: Sample) -> None:
    assert sample.status == 200, sample
    assert sample.body == {
        "allowed": True,
        "remaining": 0,
        "limit": 0,
        "reset_after_ms": 0,
        "enforced": False,
    }
    assert sample.headers["x-ratelimit-enforced"] == "false"


def assert_enforced(sample: Sample) -> None:
    assert sample.status == 200, sample
    assert "enforced" not in sample.body
    assert "x-ratelimit-enforced" not in sample.headers
    assert int(sample.headers["x-ratelimit-limit"]) == sample.body["limit"]


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value from a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.fixture
def start_service(
    own_redis: RedisProcess, prefix: str, tmp_path: Path
) -> Iterator[Callable[[str], ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start(policy: str) -> ServiceProcess:
        env = {
            "REDIS_URL": own_redis.url,
            "KEY_PREFIX": prefix,
            "FAILURE_POLICY": policy,
            "REDIS_TIMEOUT_MS": str(TIMEOUT_MS),
            "BREAKER_FAILURES": "3",
            "BREAKER_COOLDOWN_MS": str(COOLDOWN_MS),
            # a default limit no test exhausts: only Redis decides what the client sees
            "DEFAULT_CAPACITY": "1000000000",
            "DEFAULT_REFILL_RATE": "1000000",
            "WORKER_BLOCK_MS": "100",
            "WORKER_METRICS_PORT": "0",
        }
        service = ServiceProcess(env)
        started.append(service)
        return service.start(tmp_path)

    try:
        yield start
    finally:
        for service in started:
            service.stop()


def client(service: ServiceProcess) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    return httpx.AsyncClient(base_url=service.base_url, timeout=10, limits=limits)


async def scrape(http: httpx.AsyncClient) -> str:
    resp = await http.get("/metrics")
    assert resp.status_code == 200
    return resp.text


def assert_prompt(*traffics: Traffic) -> None:
    for traffic in traffics:
        slow = [s for s in traffic.samples if s.took >= PROMPT_S or s.status is None]
        assert slow == [], f"{traffic.path}: {len(slow)} slow or failed requests: {slow[:3]}"


def assert_ready_told_the_truth(
    ready: Traffic, down_from: float, down_until: float, up_again: float
) -> None:
    """/ready was 200 before the outage, 503 during it and 200 once Redis was back."""
    before = ready.between(0, down_from)
    during = ready.between(down_from, down_until)
    after = ready.between(up_again)
    assert before, "no readiness probe before the outage"
    assert during, "no readiness probe during the outage"
    assert after, "no readiness probe after the outage"
    assert {s.status for s in before} == {200}
    assert {s.status for s in during} == {503}
    assert {s.status for s in after} == {200}, [
        (round(s.started - up_again, 3), round(s.took, 3), s.status) for s in after
    ][:20]
    assert all(s.body == {"status": "not_ready", "redis": "disconnected"} for s in during)


async def test_closed_policy_redis_killed_then_restarted(
    start_service: Callable[[str], ServiceProcess], own_redis: RedisProcess
) -> None:
    service = start_service("closed")
    async with client(service) as http:
        checks = Traffic(http, "POST", "/rate-limit/stream/check", CONCURRENCY)
        ready = Traffic(http, "GET", "/ready", 1)
        async with checks.running(), ready.running(pause_s=0.02):
            await checks.wait_for(is_ok, 50, after=0, within=10)
            await ready.wait_for(is_ok, 2, after=0, within=10)

            own_redis.stop()  # SIGKILL: connections reset, the port refuses
            killed = time.monotonic()
            await checks.wait_for(is_unavailable, 50, after=killed, within=5)
            await ready.wait_for(is_unavailable, 3, after=killed, within=5)
            assert metric(await scrape(http), "throttler_circuit_open") == 1

            own_redis.start()  # the same port, an empty server (no scripts, no keys)
            restarted = time.monotonic()
            recovered = await checks.wait_for(is_ok, 20, after=restarted, within=RECOVERY_S)
            await ready.wait_for(is_ok, 3, after=restarted, within=RECOVERY_S)
        assert recovered - restarted < RECOVERY_S

        assert_prompt(checks, ready)
        assert {s.status for s in checks.samples} == {200, 503}
        for sample in checks.samples:
            if sample.status == 503:
                assert_redis_unavailable(sample)
            else:
                assert_enforced(sample)
        assert {s.status for s in checks.between(restarted + RECOVERY_S)} <= {200}
        assert_ready_told_the_truth(ready, killed, restarted, restarted)

        # Every 503 was counted as a degraded decision under the closed policy.
        text = await scrape(http)
        refused = sum(s.status == 503 for s in checks.samples)
        assert metric(text, "throttler_degraded_decisions_total", policy="closed") == refused
        assert metric(text, "throttler_degraded_decisions_total", policy="open") == 0
        assert metric(text, "throttler_circuit_open") == 0
    assert service.proc is not None
    assert service.proc.poll() is None  # recovered by itself: never restarted


async def test_open_policy_allows_and_marks_unenforced_decisions(
    start_service: Callable[[str], ServiceProcess], own_redis: RedisProcess
) -> None:
    service = start_service("open")
    async with client(service) as http:
        checks = Traffic(http, "POST", "/rate-limit/stream/check", CONCURRENCY)
        ready = Traffic(http, "GET", "/ready", 1)
        async with checks.running(), ready.running(pause_s=0.02):
            await checks.wait_for(is_ok, 50, after=0, within=10)
            own_redis.stop()
            killed = time.monotonic()
            await checks.wait_for(lambda s: "x-ratelimit-enforced" in s.headers, 50, killed, 5)
            await ready.wait_for(is_unavailable, 3, after=killed, within=5)
            own_redis.start()
            restarted = time.monotonic()
            recovered = await checks.wait_for(
                lambda s: s.status == 200 and "x-ratelimit-enforced" not in s.headers,
                20,
                after=restarted,
                within=RECOVERY_S,
            )
            await ready.wait_for(is_ok, 3, after=restarted, within=RECOVERY_S)
        assert recovered - restarted < RECOVERY_S

        assert_prompt(checks, ready)
        # Nothing but 200s: enforced while Redis answered, allowed and marked while not.
        assert {s.status for s in checks.samples} == {200}
        unenforced = [s for s in checks.samples if "x-ratelimit-enforced" in s.headers]
        for sample in checks.samples:
            if sample in unenforced:
                assert_not_enforced(sample)
            else:
                assert_enforced(sample)
        assert all(s.started >= killed - PROMPT_S for s in unenforced)
        assert_ready_told_the_truth(ready, killed, restarted, restarted)

        text = await scrape(http)
        assert metric(text, "throttler_degraded_decisions_total", policy="open") == len(unenforced)
        assert metric(text, "throttler_degraded_decisions_total", policy="closed") == 0
        allowed = metric(
            text, "throttler_checks_total", algorithm="unknown", decision="degraded_allowed"
        )
        assert allowed == len(unenforced)


async def test_hung_redis_answers_within_the_timeout_budget_and_the_breaker_makes_it_fast(
    start_service: Callable[[str], ServiceProcess], own_redis: RedisProcess
) -> None:
    """SIGSTOP: connections stay open and nothing answers, so every call waits for its
    timeout until the circuit opens; from then on a check does not wait at all."""
    service = start_service("closed")
    assert own_redis.proc is not None
    async with client(service) as http:
        checks = Traffic(http, "POST", "/rate-limit/hung/check", CONCURRENCY)
        ready = Traffic(http, "GET", "/ready", 1)
        try:
            async with checks.running(), ready.running(pause_s=0.02):
                await checks.wait_for(is_ok, 50, after=0, within=10)
                own_redis.proc.send_signal(signal.SIGSTOP)
                paused = time.monotonic()
                await checks.wait_for(is_unavailable, 50, after=paused, within=5)
                await ready.wait_for(is_unavailable, 2, after=paused, within=5)
            assert metric(await scrape(http), "throttler_circuit_open") == 1

            # With the circuit open, a check is answered without asking Redis.
            took = []
            for _ in range(30):
                began = time.monotonic()
                resp = await http.post("/rate-limit/hung/check")
                took.append(time.monotonic() - began)
                assert resp.status_code == 503
            assert statistics.median(took) < TIMEOUT_MS / 1000 / 4, took
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        deadline = resumed + RECOVERY_S
        while (await http.post("/rate-limit/hung/check")).status_code != 200:
            assert time.monotonic() < deadline, "checks did not recover after SIGCONT"
            await anyio.sleep(0.02)
        assert (await http.get("/ready")).status_code == 200

    assert_prompt(checks, ready)
    hung = checks.between(paused)
    assert hung
    assert {s.status for s in hung} <= {200, 503}  # 200: answered before the pause took
    # The budget: one socket timeout (plus the service's own time), never more.
    assert max(s.took for s in hung) < TIMEOUT_MS / 1000 + 1.0  # + a loaded machine
    # /ready waits for one PING timeout at most, and says so.
    assert {s.status for s in ready.between(paused + 0.05)} == {503}


async def test_script_flush_mid_run_causes_no_error(
    start_service: Callable[[str], ServiceProcess], own_redis: RedisProcess
) -> None:
    """SCRIPT FLUSH, repeatedly, while 600 concurrent checks run on a limit of 300: each
    is answered 200 or 429 and exactly 300 are admitted."""
    service = start_service("closed")
    limit = 300
    flusher = Redis.from_url(own_redis.url)
    statuses: list[int] = []
    flushes = 0
    try:
        async with client(service) as http:
            created = await http.post(
                "/rate-limit/flushed", json={"requests": limit, "window_ms": DAY_MS}
            )
            assert created.status_code == 201, created.text
            done = anyio.Event()

            async def flush_until_done() -> None:
                nonlocal flushes
                while not done.is_set():
                    await flusher.script_flush()
                    flushes += 1
                    await anyio.sleep(0.002)

            async def one() -> None:
                statuses.append((await http.post("/rate-limit/flushed/check")).status_code)

            async with anyio.create_task_group() as tg:
                tg.start_soon(flush_until_done)
                async with anyio.create_task_group() as load:
                    for _ in range(2 * limit):
                        load.start_soon(one)
                done.set()
            text = await scrape(http)
    finally:
        await flusher.aclose()
    assert flushes >= 3
    assert Counter(statuses) == {200: limit, 429: limit}
    assert metric(text, "throttler_redis_errors_total", operation="check") == 0
