"""Spend primitives across two ``throttler serve`` processes on one Redis: leases are exact
(N concurrent acquires against L slots grant L), expired leases free their slots, a lease
taken through one process is released through the other, and reservations handed out
concurrently by both processes never share a start time."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from tests.support.poll import until
from tests.support.service import ServiceProcess, running

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio

SLOTS = 7
ACQUIRES = 120
DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def services(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServiceProcess]]:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        "WORKER_BLOCK_MS": "100",
        "WORKER_METRICS_PORT": "0",
    }
    procs = [ServiceProcess(dict(env)), ServiceProcess(dict(env))]
    with running(procs, tmp_path_factory.mktemp("spend")):
        yield procs


async def acquire_all(services: list[ServiceProcess], key: str) -> tuple[Counter[int], list[str]]:
    """ACQUIRES acquires at once, alternating between the processes, each on a connection of
    its own (a fresh client: no pooled connection the server may have closed meanwhile)."""
    statuses: Counter[int] = Counter()
    leases: list[str] = []
    limits = httpx.Limits(max_connections=ACQUIRES, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:

        async def one(i: int) -> None:
            resp = await http.post(f"{services[i % 2].base_url}/rate-limit/{key}/acquire")
            statuses[resp.status_code] += 1
            if resp.status_code == 200:
                leases.append(resp.json()["lease"])

        async with anyio.create_task_group() as tg:
            for i in range(ACQUIRES):
                tg.start_soon(one, i)
    return statuses, leases


async def test_concurrent_acquires_on_two_processes_grant_exactly_the_slots(
    services: list[ServiceProcess],
) -> None:
    key = "lease-exact"
    async with httpx.AsyncClient(timeout=30) as http:
        created = await http.post(
            f"{services[0].base_url}/rate-limit/{key}",
            json={"requests": SLOTS, "window_ms": DAY_MS, "algorithm": "concurrency"},
        )
        assert created.status_code == 201, created.text
    statuses, leases = await acquire_all(services, key)
    assert statuses == {200: SLOTS, 429: ACQUIRES - SLOTS}
    assert len(set(leases)) == SLOTS
    async with httpx.AsyncClient(timeout=30) as http:
        # Released through either process, whichever granted it: the lease lives in
        # Redis. Each is released once; a second time is a 404.
        for i, lease in enumerate(leases):
            url = f"{services[(i + 1) % 2].base_url}/rate-limit/{key}/release"
            assert (await http.post(url, json={"lease": lease})).status_code == 200
        again = await http.post(
            f"{services[0].base_url}/rate-limit/{key}/release", json={"lease": leases[0]}
        )
        assert again.status_code == 404
    # Every slot is free again, and still exactly SLOTS of them.
    statuses, _ = await acquire_all(services, key)
    assert statuses == {200: SLOTS, 429: ACQUIRES - SLOTS}


async def test_an_expired_lease_frees_its_slot(services: list[ServiceProcess]) -> None:
    """A holder that never releases (it crashed) cannot keep its slot past the lifetime."""
    key = "lease-expiry"
    async with httpx.AsyncClient(timeout=30) as http:
        created = await http.post(
            f"{services[0].base_url}/rate-limit/{key}",
            json={"requests": 1, "window_ms": DAY_MS, "algorithm": "concurrency"},
        )
        assert created.status_code == 201, created.text
        url = f"{services[0].base_url}/rate-limit/{key}/acquire"
        taken = await http.post(url, json={"ttl_ms": 300})
        assert (taken.status_code, taken.json()["expires_in_ms"]) == (200, 300)
        denied = await http.post(f"{services[1].base_url}/rate-limit/{key}/acquire")
        assert denied.status_code == 429
        assert 0 < denied.json()["retry_after_ms"] <= 300

        async def free() -> bool:
            resp = await http.post(f"{services[1].base_url}/rate-limit/{key}/acquire")
            return resp.status_code == 200

        await until(free, 15)
        # The expired lease is gone: releasing it now is a 404, not a release of another.
        gone = await http.post(
            f"{services[0].base_url}/rate-limit/{key}/release",
            json={"lease": taken.json()["lease"]},
        )
        assert gone.status_code == 404


async def test_concurrent_reservations_on_two_processes_never_overlap(
    services: list[ServiceProcess],
) -> None:
    """GCRA, 1 per day and a burst of 1: reservation k starts k days after the first, less
    the (few) seconds between their decisions. Two reservations given the same slot would
    have waits a day apart from what their rank says."""
    key = "reserve-exact"
    count = 20
    async with httpx.AsyncClient(timeout=30) as http:
        created = await http.post(
            f"{services[0].base_url}/rate-limit/{key}",
            json={"requests": 1, "window_ms": DAY_MS, "algorithm": "gcra", "burst": 1},
        )
        assert created.status_code == 201, created.text
        waits: list[int] = []

        async def one(i: int) -> None:
            resp = await http.post(
                f"{services[i % 2].base_url}/rate-limit/{key}/check",
                json={"max_wait_ms": 30 * DAY_MS},
            )
            assert resp.status_code == 200, resp.text
            waits.append(resp.json()["wait_ms"])

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
        waits.sort()
        assert waits[0] == 0
        for rank, wait in enumerate(waits):
            assert rank * DAY_MS - 60_000 < wait <= rank * DAY_MS
        # The next one would start 20 days out: past a 19-day wait, it is denied.
        late = await http.post(
            f"{services[0].base_url}/rate-limit/{key}/check", json={"max_wait_ms": 19 * DAY_MS}
        )
        assert late.status_code == 429
        assert count * DAY_MS - 60_000 < late.json()["retry_after_ms"] <= count * DAY_MS
