"""Calendar quotas: a fixed window that is a UTC calendar month (``"calendar": "month"``).

The script computes the month from the server clock (civil-from-days arithmetic in Lua);
these tests pin the clock (``now_us``) and compare with Python's calendar.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import hypothesis
import msgspec
import pytest
from hypothesis import strategies as st

from core.gateway import Gateway
from core.keys import KeySpace
from core.limiter import Limiter
from core.scripts import decode_limits, encode_limits
from schemas.limits import MAX_WINDOW_MS, Limit

if TYPE_CHECKING:
    from litestar.testing import AsyncTestClient

    from core.settings import Settings

pytestmark = pytest.mark.anyio

MONTH = Limit(3, MAX_WINDOW_MS, "fixed_window", calendar="month")


def us(*when: int) -> int:
    """A UTC date and time as microseconds since the epoch."""
    return int(datetime(*when, tzinfo=UTC).timestamp()) * 1_000_000  # type: ignore[arg-type,misc]


def next_month_us(now_us: int) -> int:
    day = datetime.fromtimestamp(now_us // 1_000_000, tz=UTC)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return us(year, month, 1)


def test_a_calendar_limit_needs_a_fixed_window_of_31_days() -> None:
    body = b'{"requests": 5, "window_ms": %d, "algorithm": "%s", "calendar": "month"}'
    with pytest.raises(msgspec.ValidationError, match="calendar applies to fixed_window"):
        msgspec.json.decode(body % (MAX_WINDOW_MS, b"token_bucket"), type=Limit)
    with pytest.raises(msgspec.ValidationError, match="window_ms 2678400000"):
        msgspec.json.decode(body % (86_400_000, b"fixed_window"), type=Limit)
    limit = msgspec.json.decode(body % (MAX_WINDOW_MS, b"fixed_window"), type=Limit)
    assert limit == Limit(5, MAX_WINDOW_MS, "fixed_window", calendar="month")
    assert decode_limits(encode_limits([limit])) == ((limit,), False)
    # Without calendar the field is not in the answer at all.
    assert b"calendar" not in msgspec.json.encode(Limit(5, 1000, "fixed_window"))


@pytest.mark.parametrize(
    ("last", "first"),
    [
        ((2024, 2, 29, 23, 59, 59), (2024, 3, 1)),  # a leap February
        ((2100, 2, 28, 23, 59, 59), (2100, 3, 1)),  # not a leap year (÷100)
        ((2000, 2, 29, 12, 0, 0), (2000, 3, 1)),  # a leap year (÷400)
        ((2026, 12, 31, 23, 59, 59), (2027, 1, 1)),  # a new year
        ((2026, 4, 30, 0, 0, 0), (2026, 5, 1)),  # a 30-day month
    ],
)
async def test_the_quota_resets_on_the_first_of_the_month(
    gateway: Gateway, keys: KeySpace, last: tuple[int, ...], first: tuple[int, ...]
) -> None:
    limiter = Limiter(gateway, keys, MONTH)
    key = f"month:{first}"
    start = us(*first)
    spent = await limiter.check(key, 3, now_us=us(*last))
    assert (spent.allowed, spent.remaining, spent.reset_after_ms) == (
        True,
        0,
        (start - us(*last)) // 1000,
    )
    denied = await limiter.check(key, 1, now_us=start - 1)  # the month's last microsecond
    assert (denied.allowed, denied.retry_after_ms) == (False, 1)
    fresh = await limiter.check(key, 1, now_us=start)  # the 1st, 00:00:00 UTC
    assert (fresh.allowed, fresh.remaining) == (True, 2)
    assert fresh.reset_after_ms == (next_month_us(start) - start) // 1000


async def test_the_server_clock_decides_the_month(gateway: Gateway, keys: KeySpace) -> None:
    """Without a pinned clock the month is the server's (TIME): reset is its end."""
    limiter = Limiter(gateway, keys, MONTH)
    before = datetime.now(UTC).timestamp() * 1_000_000
    result = await limiter.check("month:live", 2)
    to_end_ms = (next_month_us(int(before)) - before) / 1000
    assert (result.allowed, result.remaining) == (True, 1)
    assert abs(result.reset_after_ms - to_end_ms) < 60_000  # the same month end


def test_every_month_end_matches_the_civil_calendar(settings: Settings) -> None:
    """The script's month arithmetic against Python's calendar, anywhere in 1970-2199: a
    spend on a fresh key reports the time to the next 1st as its reset."""

    async def spend(now: int) -> int:
        gateway = Gateway(settings)
        try:
            limiter = Limiter(gateway, KeySpace(settings.key_prefix), MONTH)
            result = await limiter.check(f"m{uuid.uuid4().hex}", 1, now_us=now)
            return result.reset_after_ms
        finally:
            await gateway.aclose()

    @hypothesis.settings(max_examples=60, deadline=None)
    @hypothesis.given(st.integers(min_value=0, max_value=us(2199, 12, 1) - 1))
    def example(now: int) -> None:
        assert anyio.run(spend, now) == -(-(next_month_us(now) - now) // 1000)

    example()


async def test_the_api_stores_and_shows_a_calendar_limit(client: AsyncTestClient[Any]) -> None:
    body = {"requests": 2, "window_ms": MAX_WINDOW_MS, "algorithm": "fixed_window"}
    created = await client.post("/rate-limit/acme", json={**body, "calendar": "month"})
    assert created.status_code == 201, created.text
    assert created.json() == {**body, "burst": None, "calendar": "month"}
    assert (await client.post("/rate-limit/acme/check", json={"tokens": 2})).status_code == 200
    denied = await client.post("/rate-limit/acme/check", json={})
    assert denied.status_code == 429
    assert denied.json()["retry_after_ms"] <= MAX_WINDOW_MS
    shown = (await client.get("/rate-limit/acme")).json()
    assert shown["limits"][0]["calendar"] == "month"
    assert shown["limits"][0]["remaining"] == 0
    bad = await client.post("/rate-limit/acme", json={**body, "calendar": "week"})
    assert bad.status_code == 400
    assert bad.json()["error"] == "validation_error"
    wrong = await client.post(
        "/rate-limit/acme", json={**body, "window_ms": 1000, "calendar": "month"}
    )
    assert wrong.status_code == 400
    assert "window_ms 2678400000" in wrong.json()["message"]
