"""Properties of the pure algorithm models in ``core/algorithms.py`` (no I/O).

Each property is stated once and run against every algorithm it applies to. States are
reached by random histories of checks, so the properties hold for used keys, not only
fresh ones. Times are realistic epoch microseconds: fixed windows are aligned to the epoch
and the models must stay exact at that magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core import algorithms
from core.algorithms import MICRO, Decision

if TYPE_CHECKING:
    from collections.abc import Sequence

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
BUCKETS = ("token_bucket", "gcra")
ALL = ("token_bucket", "gcra", "sliding_window", "fixed_window")

FAST = settings(max_examples=80, deadline=None)


@dataclass(frozen=True, slots=True)
class Model:
    """One algorithm with its limit bound, so every property can call it the same way."""

    name: str
    requests: int
    window_us: int
    burst: int  # capacity for token_bucket and gcra; ignored by the windows

    @property
    def limit(self) -> int:
        return self.burst if self.name in BUCKETS else self.requests

    def check(self, state: Any, n: int, now: int) -> tuple[Decision, Any]:
        if self.name == "token_bucket":
            return algorithms.token_bucket(state, n, now, self.requests, self.window_us, self.burst)
        if self.name == "gcra":
            return algorithms.gcra(state, n, now, self.requests, self.window_us, self.burst)
        if self.name == "sliding_window":
            return algorithms.sliding_window(state, n, now, self.requests, self.window_us)
        return algorithms.fixed_window(state, n, now, self.requests, self.window_us)


@st.composite
def models(draw: st.DrawFn, names: Sequence[str] = ALL) -> Model:
    name = draw(st.sampled_from(names))
    small = st.integers(1, 40)
    if name == "sliding_window":
        requests = draw(small)  # the log holds one entry per token: keep it short
    else:
        requests = draw(st.one_of(small, st.integers(41, 1_000_000)))
    window_ms = draw(st.one_of(st.integers(1, 2_000), st.integers(2_001, 31 * 86_400_000)))
    burst = requests
    if name in BUCKETS:
        burst = draw(st.one_of(st.just(requests), st.integers(1, 2 * requests)))
    if name == "gcra":
        # Keep the theoretical arrival time within 2^53 µs of the epoch, as the Lua must.
        assume(math.ceil(window_ms * 1000 / requests) * burst < 2**52 - T0)
    return Model(name, requests, window_ms * 1000, burst)


def tokens(model: Model, data: st.DataObject, low: int = 0) -> int:
    """A token count a check may ask for (never above the capacity), small ones likelier."""
    cap = model.limit
    return data.draw(st.one_of(st.integers(low, min(cap, 3)), st.integers(low, cap)))


def steps(model: Model, data: st.DataObject, max_size: int = 12) -> list[tuple[int, int]]:
    """A history: (µs since the previous check, tokens) pairs, time never going back."""
    w = model.window_us
    dt = st.one_of(st.just(0), st.integers(0, 50), st.integers(0, w), st.integers(0, 3 * w))
    n = st.one_of(st.integers(0, min(model.limit, 3)), st.integers(0, model.limit))
    return data.draw(st.lists(st.tuples(dt, n), max_size=max_size))


def run(model: Model, state: Any, now: int, history: list[tuple[int, int]]) -> tuple[Any, int]:
    for dt, n in history:
        now += dt
        _, state = model.check(state, n, now)
    return state, now


def used(model: Model, data: st.DataObject) -> tuple[Any, int]:
    """A key's state after a random history, and the time of its last check."""
    start = T0 + data.draw(st.integers(0, 10 * model.window_us))
    return run(model, None, start, steps(model, data))


def denying(model: Model, data: st.DataObject, state: Any, now: int) -> int:
    """A token count that ``state`` denies at ``now`` (the example is dropped if none)."""
    peek, _ = model.check(state, 0, now)
    assume(peek.remaining < model.limit)
    return data.draw(st.integers(peek.remaining + 1, model.limit))


@FAST
@given(models(), st.data())
def test_a_denied_check_changes_nothing(model: Model, data: st.DataObject) -> None:
    state, now = used(model, data)
    n = denying(model, data, state, now)
    denied, after = model.check(state, n, now)
    assert not denied.allowed
    assert after == state
    # And nothing later can tell that it happened.
    later = steps(model, data, max_size=6)
    assert replay(model, after, now, later) == replay(model, state, now, later)


def replay(model: Model, state: Any, now: int, history: list[tuple[int, int]]) -> list[Decision]:
    decisions = []
    for dt, n in history:
        now += dt
        decision, state = model.check(state, n, now)
        decisions.append(decision)
    return decisions


@FAST
@given(models(), st.data())
def test_a_peek_changes_nothing_and_answers_as_the_check_would(
    model: Model, data: st.DataObject
) -> None:
    state, now = used(model, data)
    n = tokens(model, data, low=1)
    peek, after = model.check(state, 0, now)
    assert peek.allowed
    assert peek.retry_after_us == 0
    assert after == state
    asked, _ = model.check(state, n, now)
    assert model.check(after, n, now)[0] == asked  # peeking first made no difference
    assert asked.allowed == (n <= peek.remaining)  # remaining is exactly what can be spent
    if not asked.allowed:
        assert (asked.remaining, asked.reset_after_us) == (peek.remaining, peek.reset_after_us)


@FAST
@given(models(), st.data())
def test_a_fresh_key_admits_exactly_limit_tokens_at_one_instant(
    model: Model, data: st.DataObject
) -> None:
    now = T0 + data.draw(st.integers(0, 10 * model.window_us))
    asks = data.draw(st.lists(st.integers(1, model.limit), max_size=8))
    state: Any = None
    spent = 0
    for n in asks:
        decision, state = model.check(state, n, now)
        assert decision.allowed == (spent + n <= model.limit)
        spent += n if decision.allowed else 0
        assert decision.remaining == model.limit - spent
    # Spend what is left one token at a time (capped, so huge limits stay fast).
    left = model.limit - spent
    if left > 50:
        decision, state = model.check(state, left, now)
        assert decision.allowed
        left = 0
    for _ in range(left):
        decision, state = model.check(state, 1, now)
        assert decision.allowed
    denied, _ = model.check(state, 1, now)
    assert not denied.allowed
    assert denied.remaining == 0
    assert denied.retry_after_us > 0


@FAST
@given(models(), st.data())
def test_waiting_retry_after_is_enough_and_necessary(model: Model, data: st.DataObject) -> None:
    state, now = used(model, data)
    n = denying(model, data, state, now)
    denied, state = model.check(state, n, now)
    wait = denied.retry_after_us
    assert wait > 0
    assert model.check(state, n, now + wait)[0].allowed
    assert not model.check(state, n, now + wait - 1)[0].allowed


@FAST
@given(models(), st.data())
def test_every_answer_is_in_range(model: Model, data: st.DataObject) -> None:
    now = T0 + data.draw(st.integers(0, 10 * model.window_us))
    state: Any = None
    for dt, n in steps(model, data, max_size=20):
        now += dt
        decision, state = model.check(state, n, now)
        assert decision.limit == model.limit
        assert 0 <= decision.remaining <= model.limit
        assert decision.reset_after_us >= 0
        assert (decision.retry_after_us > 0) == (not decision.allowed)
        # Back to the full limit exactly when there is nothing left to wait for.
        assert (decision.reset_after_us == 0) == (decision.remaining == model.limit)


@FAST
@given(models(), st.data())
def test_after_reset_after_the_key_is_back_to_its_limit(model: Model, data: st.DataObject) -> None:
    state, now = used(model, data)
    peek, _ = model.check(state, 0, now)
    reset = peek.reset_after_us
    assert model.check(state, 0, now + reset)[0].remaining == model.limit
    if reset > 0:
        assert model.check(state, 0, now + reset - 1)[0].remaining < model.limit


@FAST
@given(models(names=BUCKETS), st.data())
def test_buckets_never_admit_more_than_burst_plus_the_rate(
    model: Model, data: st.DataObject
) -> None:
    start = now = T0 + data.draw(st.integers(0, model.window_us))
    state: Any = None
    admitted = 0
    for dt, n in steps(model, data, max_size=25):
        now += dt
        decision, state = model.check(state, n, now)
        admitted += n if decision.allowed else 0
    if model.name == "gcra":  # one token per (rounded up) emission interval
        refill = (now - start) // math.ceil(model.window_us / model.requests)
    else:
        refill = (now - start) * model.requests // model.window_us
    assert admitted <= model.burst + refill


@FAST
@given(models(names=("sliding_window",)), st.data())
def test_sliding_window_admits_at_most_requests_in_any_window(
    model: Model, data: st.DataObject
) -> None:
    now = T0
    state: Any = None
    admitted: list[tuple[int, int]] = []
    for dt, n in steps(model, data, max_size=25):
        now += dt
        decision, state = model.check(state, n, now)
        if decision.allowed and n:
            admitted.append((now, n))
    for end, _ in admitted:  # the busiest windows end at an admission
        inside = sum(n for t, n in admitted if end - model.window_us < t <= end)
        assert inside <= model.requests


@FAST
@given(models(names=("fixed_window",)), st.data())
def test_fixed_window_allows_requests_per_window_and_twice_that_across_a_boundary(
    model: Model, data: st.DataObject
) -> None:
    w = model.window_us
    now = T0
    state: Any = None
    admitted: list[tuple[int, int]] = []
    dt = st.one_of(st.integers(0, 3), st.integers(0, w // 3 + 1), st.integers(0, 2 * w))
    for gap, n in data.draw(st.lists(st.tuples(dt, st.integers(1, model.limit)), max_size=30)):
        now += gap
        decision, state = model.check(state, n, now)
        if decision.allowed:
            admitted.append((now, n))
    per_window: dict[int, int] = {}
    for t, n in admitted:
        per_window[t // w] = per_window.get(t // w, 0) + n
    assert all(count <= model.requests for count in per_window.values())
    for end, _ in admitted:
        assert sum(n for t, n in admitted if end - w < t <= end) <= 2 * model.requests


def test_fixed_window_boundary_burst_reaches_twice_requests() -> None:
    model = Model("fixed_window", 10, 60_000_000, 10)
    boundary = (T0 // model.window_us + 1) * model.window_us
    state: Any = None
    allowed = 0
    for now in (boundary - 1, boundary):  # two instants 1 µs apart
        for _ in range(11):
            decision, state = model.check(state, 1, now)
            allowed += decision.allowed
    assert allowed == 2 * model.requests


def test_token_bucket_refills_at_a_slow_rate_under_frequent_checks() -> None:
    # 1 token per hour is 0.28 micro-tokens per ms: every check below credits less than one
    # micro-token. Advancing t only by credited time keeps the fractions; t = now would
    # lose them all and the bucket would never refill. Six simulated minutes (360,000
    # checks, each spending a token so that state is written every time) must credit
    # exactly a tenth of a token.
    model = Model("token_bucket", 1, 3_600_000_000, 1_000_000)
    _, state = model.check(None, 1, T0)
    for i in range(1, 360_001):
        decision, state = model.check(state, 1, T0 + i * 1_000)
        assert decision.allowed
    spent = 360_001
    assert state[0] == (model.burst - spent) * MICRO + MICRO // 10


@FAST
@given(
    st.integers(1, 100),
    st.integers(1, 86_400_000),
    st.integers(1, 5_000),
    st.integers(1, 400),
)
def test_token_bucket_keeps_the_refill_that_frequent_writes_would_round_away(
    requests: int, window_ms: int, every_us: int, checks: int
) -> None:
    """However often the bucket is written, it holds (almost) what elapsed time paid for.

    Only whole microseconds of credit can be carried, so a write may drop the refill of
    less than one of them: at most ``min(1, rate)`` micro-tokens. Resetting ``t`` to now on
    each write would drop up to a whole micro-token each time, and at slow rates all of it.
    """
    model = Model("token_bucket", requests, window_ms * 1000, 10_000)
    rate = requests * MICRO / model.window_us  # micro-tokens per µs
    assume(every_us * rate < MICRO)  # each check spends more than it credits: never full
    _, state = model.check(None, 1, T0)
    for i in range(1, checks + 1):
        decision, state = model.check(state, 1, T0 + i * every_us)
        assert decision.allowed
    paid = (model.burst - checks - 1) * MICRO + checks * every_us * rate
    slack = 1e-9 * paid  # float rounding of the reference value above
    assert paid - checks * min(1.0, rate) - slack <= state[0] <= paid + slack


def test_gcra_rounds_the_emission_interval_up_to_a_microsecond() -> None:
    # 300,000 per second is an interval of 3.33 µs, rounded up to 4 µs: 250,000 per second.
    # Both spend their burst of 10 at once, then refill while checked every µs for 1 ms.
    gcra = Model("gcra", 300_000, 1_000_000, 10)
    bucket = Model("token_bucket", 300_000, 1_000_000, 10)
    for model, per_ms in ((gcra, 249), (bucket, 299)):  # 999 µs of refill: 999 // 4, 999·0.3
        state: Any = None
        admitted = 0
        for now in range(T0, T0 + 1_000):
            while (decision := model.check(state, 1, now))[0].allowed:
                state = decision[1]
                admitted += 1
        assert admitted == model.burst + per_ms, model.name
