"""Groups of keys decided by one script call (core/lua/check_group.lua): all-or-nothing over
the enforced keys, advisory (shadow) keys never blocking, on a real Redis."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from core.groups import GroupChecker, GroupItem
from core.scripts import limit_args
from schemas.limits import Limit

if TYPE_CHECKING:
    from core.gateway import Gateway
    from core.keys import KeySpace

pytestmark = pytest.mark.anyio

NOW = 1_767_225_600_000_000  # a fixed clock (µs): windows never roll over in a test
DAY = Limit(requests=2, window_ms=86_400_000, algorithm="fixed_window")
ONE = Limit(requests=1, window_ms=86_400_000, algorithm="fixed_window")


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"rls/d/a={tag}", f"rls/d/b={tag}"


async def test_nothing_is_spent_when_an_enforced_key_denies(
    gateway: Gateway, keys: KeySpace
) -> None:
    checker = GroupChecker(gateway, keys)
    a, b = names()
    day, one = limit_args([DAY]), limit_args([ONE])
    group = [GroupItem(a, 1, day), GroupItem(b, 1, one)]
    first = await checker.check(group, now_us=NOW)
    assert [(d.code, d.remaining, d.spent) for d in first] == [(1, 1, True), (1, 0, True)]
    second = await checker.check(group, now_us=NOW)
    # b denies: a could pay, is not charged, and says what it has left now.
    assert [(d.code, d.remaining, d.spent) for d in second] == [(1, 1, False), (0, 0, False)]
    alone = await checker.check([GroupItem(a, 1, day)], now_us=NOW)
    assert [(d.code, d.remaining, d.spent) for d in alone] == [(1, 0, True)]


async def test_an_advisory_key_never_blocks_the_others(gateway: Gateway, keys: KeySpace) -> None:
    checker = GroupChecker(gateway, keys)
    a, b = names()
    day, one = limit_args([DAY]), limit_args([ONE])
    group = [GroupItem(a, 1, day), GroupItem(b, 1, one, advisory=True)]
    await checker.check(group, now_us=NOW)
    second = await checker.check(group, now_us=NOW)
    assert [(d.code, d.spent) for d in second] == [(1, True), (0, False)]
    assert second[0].remaining == 0


async def test_tokens_above_capacity_are_refused_as_a_denial(
    gateway: Gateway, keys: KeySpace
) -> None:
    checker = GroupChecker(gateway, keys)
    a, b = names()
    group = [GroupItem(a, 3, limit_args([DAY])), GroupItem(b, 1, limit_args([DAY]))]
    decisions = await checker.check(group, now_us=NOW)
    assert [(d.code, d.spent) for d in decisions] == [(-1, False), (1, False)]
