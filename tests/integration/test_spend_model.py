"""Reservations and refunds in the scripts against the pure models (core/algorithms.py,
core/refunds.py), step by step on a real Redis with the clock injected: random sequences of
checks with and without ``max_wait_ms`` and refunds, for every rate algorithm. Decisions,
waits and the stored state must be the same."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import algorithms, refunds
from core.limiter import Limiter
from schemas.limits import ALGORITHMS, Algorithm, Limit
from tests.integration.test_lua_model import (
    PersistingGateway,
    Probe,
    assert_same,
    capacity,
    ceil_ms,
    limits,
    starts,
    time_steps,
    token_counts,
)

if TYPE_CHECKING:
    from core.gateway import Gateway
    from core.keys import KeySpace

EXAMPLES = settings(max_examples=100, deadline=None)
#: (µs since the last step, "check" or "refund", tokens, max_wait_ms)
Step = tuple[int, str, int, int]


def model_check(limit: Limit, state: Any, n: int, now: int, wait_ms: int) -> Any:
    req, win, cap = limit.requests, limit.window_ms * 1000, capacity(limit)
    if limit.algorithm == "token_bucket":
        return algorithms.token_bucket(state, n, now, req, win, cap, wait_ms * 1000)
    if limit.algorithm == "gcra":
        return algorithms.gcra(state, n, now, req, win, cap, wait_ms * 1000)
    if limit.algorithm == "sliding_window":  # windows never reserve
        return algorithms.sliding_window(state, n, now, req, win)
    return algorithms.fixed_window(state, n, now, req, win)


def model_refund(limit: Limit, state: Any, n: int, now: int) -> Any:
    req, win, cap = limit.requests, limit.window_ms * 1000, capacity(limit)
    if limit.algorithm == "token_bucket":
        return refunds.refund_token_bucket(state, n, now, req, win, cap)
    if limit.algorithm == "gcra":
        return refunds.refund_gcra(state, n, now, req, win)
    if limit.algorithm == "sliding_window":
        return refunds.refund_sliding_window(state, n, now, win)
    return refunds.refund_fixed_window(state, n, now, win)


@st.composite
def scenarios(draw: st.DrawFn, algorithm: Algorithm) -> tuple[Limit, int, list[Step]]:
    limit = draw(limits(algorithm))
    start = draw(starts(limit.window_ms))
    cap = capacity(limit)
    waits = st.one_of(st.just(0), st.integers(1, 3 * limit.window_ms))
    step = st.tuples(
        time_steps(limit.window_ms),
        st.sampled_from(["check", "check", "refund"]),
        token_counts(cap),
        waits,
    )
    return limit, start, draw(st.lists(step, min_size=2, max_size=30))


async def compare(probe: Probe, scenario: tuple[Limit, int, list[Step]]) -> None:
    limit, now, steps = scenario
    limiter = Limiter(cast("Gateway", probe.gateway), probe.keys, limit)
    state: Any = None
    for dt, op, n, wait_ms in steps:
        now += dt
        if op == "refund":
            if n == 0:
                continue  # the API refuses a refund of 0 (tokens >= 1)
            got = await limiter.refund(probe.key, n, now_us=now)
            state = model_refund(limit, state, n, now)
            want, _ = model_check(limit, state, 0, now, 0)  # the answer: a peek after it
        else:
            got = await limiter.check(probe.key, n, max_wait_ms=wait_ms, now_us=now)
            want, state = model_check(limit, state, n, now, wait_ms)
            assert got.wait_ms == ceil_ms(want.wait_us)
        assert_same(got, want, limit, state, now)
        assert await probe.stored_state(limit.algorithm) == state
        if limit.algorithm in ("token_bucket", "gcra") and state is not None:
            # never above capacity: a refund mints nothing
            assert got.remaining <= capacity(limit)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_reservations_and_refunds_match_the_models(
    algorithm: Algorithm, redis_url: str, keys: KeySpace
) -> None:
    with asyncio.Runner() as runner:
        client = PersistingGateway(redis_url)

        @EXAMPLES
        @given(scenario=scenarios(algorithm))
        def example(scenario: tuple[Limit, int, list[Step]]) -> None:
            probe = Probe(client, keys, key=f"k{uuid.uuid4().hex}")
            runner.run(compare(probe, scenario))

        try:
            example()
        finally:
            runner.run(client.aclose())
