"""Spend primitives in the scripts, through the Limiter on a real Redis, with the clock
injected (``now_us``): leases, refunds for every rate algorithm, reserved waits."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

from core.errors import NoConcurrencyLimitError
from core.gateway import Gateway
from core.limiter import Limiter
from schemas.limits import ALGORITHMS, Limit

if TYPE_CHECKING:
    from core.keys import KeySpace
    from core.settings import Settings
    from schemas.limits import Algorithm

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000_000_000  # µs
S = 1_000_000


def fresh() -> str:
    return f"k{uuid.uuid4().hex}"


def limiter(gateway: Gateway, keys: KeySpace, *limits: Limit) -> Limiter:
    return Limiter(gateway, keys, limits)


async def test_leases_are_exact_expire_and_release(gateway: Gateway, keys: KeySpace) -> None:
    lim = limiter(gateway, keys, Limit(3, 10_000, "concurrency"))
    key = fresh()
    leases = [await lim.acquire(key, now_us=T0 + i) for i in range(4)]
    assert [bool(x.id) for x in leases] == [True, True, True, False]
    assert [x.result.remaining for x in leases] == [2, 1, 0, 0]
    assert leases[0].expires_in_ms == 10_000
    denied = leases[3].result
    assert not denied.allowed
    # The earliest lease ends 10 s after it was taken, at T0: its slot frees then.
    assert denied.retry_after_ms == 10_000
    # A check never takes a lease, and a concurrency limit never denies one.
    peek = await lim.check(key, 1, now_us=T0 + 10)
    assert (peek.allowed, peek.remaining) == (True, 0)
    # Release frees one slot; a second release of the same lease is unknown.
    assert await lim.release(key, leases[1].id, now_us=T0 + 20)
    assert not await lim.release(key, leases[1].id, now_us=T0 + 21)
    assert not await lim.release(key, "no-such-lease", now_us=T0 + 21)
    again = await lim.acquire(key, now_us=T0 + 30)
    assert again.id
    assert again.result.remaining == 0
    # Expiry frees slots by itself: just after the first lease's end, one is free.
    assert not (await lim.acquire(key, now_us=T0 + 10_000 * 1000 - 1)).id
    later = await lim.acquire(key, now_us=T0 + 10_000 * 1000 + 1)
    assert later.id
    # An expired lease cannot be released any more.
    assert not await lim.release(key, leases[0].id, now_us=T0 + 10_000 * 1000 + 2)


async def test_lease_ttl_shortens_never_lengthens(gateway: Gateway, keys: KeySpace) -> None:
    lim = limiter(gateway, keys, Limit(1, 5_000, "concurrency"))
    key = fresh()
    short = await lim.acquire(key, 1_000, now_us=T0)
    assert short.expires_in_ms == 1_000
    assert (await lim.acquire(key, now_us=T0 + 1_000 * 1000 + 1)).id  # it ended
    other = fresh()
    assert (await lim.acquire(other, 60_000, now_us=T0)).expires_in_ms == 5_000


async def test_acquire_spends_the_rate_limits_too(gateway: Gateway, keys: KeySpace) -> None:
    lim = limiter(gateway, keys, Limit(2, 60_000), Limit(5, 60_000, "concurrency"))
    key = fresh()
    got = [await lim.acquire(key, now_us=T0 + i) for i in range(3)]
    assert [bool(x.id) for x in got] == [True, True, False]  # the rate limit denies the 3rd
    assert got[2].result.index == 0
    status = await lim.status(key, now_us=T0 + 5)
    assert status.usage == [(0, 60_000), (3, 60_000)]  # nothing taken by the denial


async def test_acquire_without_a_concurrency_limit_is_refused(
    gateway: Gateway, keys: KeySpace
) -> None:
    with pytest.raises(NoConcurrencyLimitError):
        await limiter(gateway, keys, Limit(2, 60_000)).acquire(fresh(), now_us=T0)


async def test_leases_are_exact_under_concurrency(settings: Settings, keys: KeySpace) -> None:
    """Two gateways (two connection sets), 60 acquires at once against 7 slots."""
    gateways = [Gateway(settings), Gateway(settings)]
    key = fresh()
    granted: list[str] = []
    try:
        lims = [limiter(g, keys, Limit(7, 60_000, "concurrency")) for g in gateways]

        async def one(i: int) -> None:
            lease = await lims[i % 2].acquire(key)
            if lease.id:
                granted.append(lease.id)

        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(one, i)
    finally:
        for g in gateways:
            await g.aclose()
    assert len(granted) == len(set(granted)) == 7


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_refunds_give_back_and_never_exceed_capacity(
    gateway: Gateway, keys: KeySpace, algorithm: Algorithm
) -> None:
    lim = limiter(gateway, keys, Limit(10, 60_000, algorithm))
    key = fresh()
    spent = await lim.check(key, 7, now_us=T0)
    assert spent.remaining == 3
    back = await lim.refund(key, 4, now_us=T0 + 1)
    assert back.remaining == 7
    full = await lim.refund(key, 1_000, now_us=T0 + 2)
    assert full.remaining == 10
    # Never above capacity: 10 can be spent, not 11.
    assert (await lim.check(key, 10, now_us=T0 + 3)).allowed
    assert not (await lim.check(key, 1, now_us=T0 + 4)).allowed
    # A fresh key is full: a refund changes nothing and writes nothing.
    other = fresh()
    assert (await lim.refund(other, 5, now_us=T0)).remaining == 10
    assert await gateway.client.exists(*keys.script_keys(other)) == 0


async def test_sliding_refund_shrinks_the_newest_entry(gateway: Gateway, keys: KeySpace) -> None:
    lim = limiter(gateway, keys, Limit(10, 60_000, "sliding_window"))
    key = fresh()
    await lim.check(key, 3, now_us=T0)
    await lim.check(key, 4, now_us=T0 + S)
    assert (await lim.refund(key, 5, now_us=T0 + 2 * S)).remaining == 8
    entries = await gateway.client.zrange(keys.log(key), 0, -1)
    assert entries == [f"{2:016d}:2".encode()]
    # Entries every window has left are not given back: nothing counts them any more.
    assert (await lim.refund(key, 5, now_us=T0 + 70 * S)).remaining == 10
    assert await gateway.client.zcard(keys.log(key)) == 1


@pytest.mark.parametrize("algorithm", ["token_bucket", "gcra"])
async def test_reservations_queue_exactly(
    settings: Settings, keys: KeySpace, algorithm: Algorithm
) -> None:
    """40 reservations at once at one instant, from two gateways: the start times they are
    given are exactly one emission interval (100 ms) apart, none shared."""
    gateways = [Gateway(settings), Gateway(settings)]
    key = fresh()
    waits: list[int] = []
    try:
        lims = [limiter(g, keys, Limit(10, 1_000, algorithm, burst=1)) for g in gateways]

        async def one(i: int) -> None:
            result = await lims[i % 2].check(key, max_wait_ms=10_000, now_us=T0)
            assert result.allowed
            waits.append(result.wait_ms)

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
        # Past the longest wait it asks for, a reservation is a plain denial.
        late = await lims[0].check(key, max_wait_ms=3_000, now_us=T0)
        assert not late.allowed
        assert late.retry_after_ms == 4_000
    finally:
        for g in gateways:
            await g.aclose()
    assert sorted(waits) == [100 * i for i in range(40)]


async def test_windows_do_not_reserve(gateway: Gateway, keys: KeySpace) -> None:
    lim = limiter(gateway, keys, Limit(1, 1_000), Limit(5, 1_000, "fixed_window"))
    key = fresh()
    assert (await lim.check(key, max_wait_ms=5_000, now_us=T0)).allowed
    second = await lim.check(key, max_wait_ms=5_000, now_us=T0)
    assert (second.allowed, second.retry_after_ms) == (False, 1_000)
