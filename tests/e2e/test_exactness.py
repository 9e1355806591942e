"""Exactness under concurrency: two ``throttler serve`` processes on one Redis admit exactly
``limit`` of many concurrent checks, for every algorithm (DESIGN.md §6, STYLE.md 21)."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from redis import Redis

from tests.support.poll import until
from tests.support.service import ServiceProcess, running

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio

LIMIT = 50
CHECKS = 200
DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def services(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServiceProcess]]:
    """Two API processes sharing one Redis and one key prefix."""
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        "WORKER_BLOCK_MS": "100",  # only makes the in-process workers stop sooner
    }
    procs = [ServiceProcess(dict(env)), ServiceProcess(dict(env))]
    with running(procs, tmp_path_factory.mktemp("exactness")):
        yield procs


def fixed_window_far_from_a_boundary(redis_url: str) -> int:
    """A fixed window (ms) whose current window has the most time left, by the Redis clock.

    Fixed windows are aligned to multiples of their length since the epoch; a test that
    straddled a boundary would see up to twice the limit admitted. Of these lengths at
    most one can be near a boundary now, so the pick leaves hours of margin.
    """
    client = Redis.from_url(redis_url)
    try:
        seconds, micros = client.time()
    finally:
        client.close()
    now_ms = seconds * 1000 + micros // 1000
    candidates = [DAY_MS, DAY_MS + 3_600_000, DAY_MS + 7_200_000]
    window = max(candidates, key=lambda w: w - now_ms % w)
    assert window - now_ms % window > 3_600_000
    return window


@pytest.mark.parametrize("algorithm", ["token_bucket", "gcra", "sliding_window", "fixed_window"])
async def test_concurrent_checks_on_two_processes_admit_exactly_the_limit(
    services: list[ServiceProcess], redis_url: str, algorithm: str
) -> None:
    key = f"exact-{algorithm}"
    # One request per day at most refills: nothing comes back while the test runs.
    window_ms = (
        fixed_window_far_from_a_boundary(redis_url) if algorithm == "fixed_window" else DAY_MS
    )
    limits = httpx.Limits(max_connections=CHECKS, max_keepalive_connections=CHECKS)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        created = await http.post(
            f"{services[0].base_url}/rate-limit/{key}",
            json={"requests": LIMIT, "window_ms": window_ms, "algorithm": algorithm},
        )
        assert created.status_code == 201, created.text
        # The other process sees the limit (it is in Redis, not in a process).
        seen = await http.get(f"{services[1].base_url}/rate-limit/{key}")
        assert (seen.status_code, seen.json()["remaining"]) == (200, LIMIT)

        statuses: list[int] = []
        remaining: list[int] = []

        async def one(i: int) -> None:
            url = f"{services[i % 2].base_url}/rate-limit/{key}/check"
            resp = await http.post(url)
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                remaining.append(resp.json()["remaining"])

        async with anyio.create_task_group() as tg:
            for i in range(CHECKS):
                tg.start_soon(one, i)

        assert Counter(statuses) == {200: LIMIT, 429: CHECKS - LIMIT}
        # each admitted check saw a distinct remaining count: 49, 48, ..., 0
        assert sorted(remaining) == list(range(LIMIT))
        after = await http.get(f"{services[1].base_url}/rate-limit/{key}")
        assert after.json()["remaining"] == 0


@pytest.mark.parametrize(
    ("limits", "admitted"),
    [
        # a burst of 5 and a daily quota of 100: the burst binds
        ([{"requests": 5, "window_ms": DAY_MS}, {"requests": 100, "window_ms": DAY_MS}], 5),
        # a burst of 60 and a quota of 30 (sliding): the quota binds
        (
            [
                {"requests": 60, "window_ms": DAY_MS, "algorithm": "gcra"},
                {"requests": 30, "window_ms": DAY_MS, "algorithm": "sliding_window"},
            ],
            30,
        ),
    ],
)
async def test_a_two_limit_policy_is_exact_across_two_processes(
    services: list[ServiceProcess], limits: list[dict[str, object]], admitted: int
) -> None:
    """Every limit holds across processes, and a denied check spends from none of them."""
    name = f"two-{admitted}"
    prefix = f"{name}:"
    async with httpx.AsyncClient(timeout=30) as http:
        created = await http.put(
            f"{services[0].base_url}/policies/{name}",
            json={"limits": limits, "match": [f"{prefix}*"]},
        )
        assert created.status_code == 201, created.text
        key = f"{prefix}caller"

        async def seen() -> bool:
            body = (await http.get(f"{services[1].base_url}/rate-limit/{key}")).json()
            return bool(body["policy"] == name)

        await until(seen, 5)  # the other process has the policy (notification or poll)
        statuses: list[int] = []

        async def one(i: int) -> None:
            resp = await http.post(f"{services[i % 2].base_url}/rate-limit/{key}/check")
            statuses.append(resp.status_code)

        async with anyio.create_task_group() as tg:
            for i in range(CHECKS):
                tg.start_soon(one, i)
        assert Counter(statuses) == {200: admitted, 429: CHECKS - admitted}
        usage = (await http.get(f"{services[0].base_url}/rate-limit/{key}")).json()["limits"]
        capacities = [u["limit"] for u in usage]
        # each limit lost exactly what was admitted: the denials took nothing anywhere
        assert [u["remaining"] for u in usage] == [c - admitted for c in capacities]
