"""The client's local denial cache, on a clock the test moves (no I/O)."""

from __future__ import annotations

import pytest

from throttler_client import Decision, DenialCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def denial(key: str = "k", retry_after_ms: int = 2000) -> Decision:
    headers = {
        "x-ratelimit-remaining": "0",
        "retry-after": str(-(-retry_after_ms // 1000)),
        "ratelimit": f'"gcra";r=0;t={-(-retry_after_ms // 1000)}',
    }
    return Decision(key, False, 0, 10, 9000, retry_after_ms=retry_after_ms, headers=headers)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_denial_answers_checks_of_as_many_tokens_until_its_retry_time(clock: Clock) -> None:
    cache = DenialCache(clock=clock)
    cache.remember("k", 3, denial(retry_after_ms=2000), asked_at=clock.now)
    clock.now += 0.5
    local = cache.lookup("k", 3)
    assert local is not None
    assert (local.allowed, local.cached, local.retry_after_ms, local.reset_after_ms) == (
        False,
        True,
        1500,
        8500,
    )
    assert local.headers["retry-after"] == "2"
    assert local.headers["ratelimit"] == '"gcra";r=0;t=2'
    assert cache.lookup("k", 5) is not None  # more tokens cannot pass either
    assert cache.lookup("k", 2) is None  # fewer might: ask the service
    assert cache.lookup("k", 0) is None  # peeks always ask
    assert cache.lookup("other", 3) is None
    assert cache.saved == 2

    clock.now += 1.4
    almost = cache.lookup("k", 3)
    assert almost is not None
    assert (almost.retry_after_ms, almost.headers["retry-after"]) == (100, "1")
    clock.now += 0.1  # the retry time, counted from when the denied request was sent
    assert cache.lookup("k", 3) is None
    assert len(cache) == 0
    assert cache.saved == 3


def test_only_denials_with_a_retry_time_are_kept(clock: Clock) -> None:
    cache = DenialCache(clock=clock)
    cache.remember("allowed", 1, Decision("allowed", True, 5, 10, 0), clock.now)
    cache.remember("open", 1, Decision.unenforced("open"), clock.now)
    cache.remember("zero", 1, denial("zero", retry_after_ms=0), clock.now)
    assert len(cache) == 0


def test_the_cache_is_bounded_and_drops_the_oldest_denial(clock: Clock) -> None:
    cache = DenialCache(max_keys=3, clock=clock)
    for key in ("a", "b", "c", "d"):
        cache.remember(key, 1, denial(key), clock.now)
    assert len(cache) == 3
    assert cache.lookup("a", 1) is None
    assert all(cache.lookup(key, 1) for key in ("b", "c", "d"))
    cache.remember("b", 1, denial("b"), clock.now)  # denied again: the newest now
    cache.remember("e", 1, denial("e"), clock.now)
    assert cache.lookup("c", 1) is None
    assert cache.lookup("b", 1) is not None


def test_forget_and_off(clock: Clock) -> None:
    cache = DenialCache(clock=clock)
    cache.remember("k", 1, denial(), clock.now)
    cache.forget("k")
    cache.forget("never-seen")
    assert cache.lookup("k", 1) is None
    off = DenialCache(max_keys=0, clock=clock)
    off.remember("k", 1, denial(), clock.now)
    assert (len(off), off.lookup("k", 1), off.saved) == (0, None, 0)
