"""The Lua check script against the pure models (``core/algorithms.py``) on a real Redis.

Every answer field and the stored state itself must match the model after every check.
Time is injected (``now_us``) so the model sees the clock the script sees. Redis expires
keys on its own clock, though, which these simulated sequences do not follow, so the
comparisons talk to Redis through :class:`PersistingGateway`: each check ends, inside the
script, with a PTTL (checked against the model) and a PERSIST of the key's hash and log, and
nothing expires behind the model's back. Expiry on the real clock has its own tests below.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import anyio
import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from core import algorithms
from core.config_store import ConfigStore
from core.errors import LimitValidationError
from core.keys import KeySpace
from core.limiter import CheckResult, Limiter
from core.scripts import CHECK, REFUND, Script
from schemas.limits import ALGORITHMS, Algorithm, Limit

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from core.gateway import Gateway

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
BUCKETS = ("token_bucket", "gcra")
DEFAULT = Limit(requests=1, window_ms=1000)

EXAMPLES = settings(max_examples=100, deadline=None)


def ceil_ms(us: int) -> int:
    """How the script reports a wait: µs rounded up to ms, 0 when there is none."""
    return 0 if us <= 0 else math.ceil(us / 1000)


def capacity(limit: Limit) -> int:
    return limit.burst if limit.burst is not None else limit.requests


def shape(limit: Limit) -> tuple[int, int, int]:
    """(requests, window_us, capacity): a limit as the models take it."""
    return limit.requests, limit.window_ms * 1000, capacity(limit)


def model_check(limit: Limit, state: Any, n: int, now: int) -> tuple[algorithms.Decision, Any]:
    req, win = limit.requests, limit.window_ms * 1000
    if limit.algorithm == "token_bucket":
        return algorithms.token_bucket(state, n, now, req, win, capacity(limit))
    if limit.algorithm == "gcra":
        return algorithms.gcra(state, n, now, req, win, capacity(limit))
    if limit.algorithm == "sliding_window":
        return algorithms.sliding_window(state, n, now, req, win)
    return algorithms.fixed_window(state, n, now, req, win)


def expected_ttl_ms(limit: Limit, decision: algorithms.Decision) -> int:
    """The TTL a write sets: the state lives until it equals a fresh key's (ALGORITHMS.md)."""
    if limit.algorithm == "token_bucket":
        return ceil_ms(decision.reset_after_us) + 1000  # the script's safety margin
    if limit.algorithm == "sliding_window":
        return limit.window_ms
    return ceil_ms(decision.reset_after_us)


@st.composite
def limits(draw: st.DrawFn, algorithm: Algorithm | None = None) -> Limit:
    alg: Algorithm = algorithm if algorithm is not None else draw(st.sampled_from(ALGORITHMS))
    small = st.integers(1, 30)
    if alg == "sliding_window":
        requests = draw(small)  # one sorted-set entry per token
    else:
        requests = draw(st.one_of(small, st.integers(31, 1_000_000_000)))
    window_ms = draw(st.one_of(st.integers(1, 5_000), st.integers(5_001, 31 * 86_400_000)))
    burst = None
    if alg in BUCKETS:
        burst = draw(st.one_of(st.none(), st.integers(1, min(2 * requests, 1_000_000_000))))
    limit = Limit(requests=requests, window_ms=window_ms, algorithm=alg, burst=burst)
    if alg == "gcra":  # the theoretical arrival time must stay an exact double (< 2^53 µs)
        assume(math.ceil(window_ms * 1000 / requests) * capacity(limit) < 2**52 - T0)
    return limit


def token_counts(cap: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, min(cap, 3)), st.integers(0, cap))


def time_steps(window_ms: int) -> st.SearchStrategy[int]:
    """µs between checks: mostly forward, at every scale of the window; rarely backwards."""
    w = window_ms * 1000
    return st.one_of(
        st.just(0),
        st.integers(0, 100),
        st.integers(0, w),
        st.integers(0, 3 * w),
        st.sampled_from([w - 1, w, w + 1]),  # an entry leaving the window, or not quite
        st.integers(-2_000, 0),  # a clock stepping back (failover to another server)
    )


def starts(window_ms: int) -> st.SearchStrategy[int]:
    """The first check's time: anywhere, or just before a window boundary of the epoch."""
    w = window_ms * 1000
    boundary = (T0 // w + 1) * w
    return st.one_of(st.integers(T0, T0 + 10 * w), st.integers(boundary - 3, boundary))


@st.composite
def scenarios(draw: st.DrawFn, algorithm: Algorithm) -> tuple[Limit, int, list[tuple[int, int]]]:
    limit = draw(limits(algorithm))
    start = draw(starts(limit.window_ms))
    steps = st.tuples(time_steps(limit.window_ms), token_counts(capacity(limit)))
    return limit, start, draw(st.lists(steps, min_size=2, max_size=30))


class PersistingGateway:
    """Stands in for :class:`core.gateway.Gateway` where the Limiter and ConfigStore send
    their scripts. A check runs in a test build of the check script that ends by reading the
    PTTL of both keys it touches (the key's hash and its log) and PERSISTing them: inside a
    script Redis's clock stands still, so nothing expires behind the model's back however
    slow the machine is. The PTTLs are kept in :attr:`last_pttl`.
    """

    cluster = False

    def __init__(self, url: str) -> None:
        self.client = Redis.from_url(url)
        self.last_pttl = (-3, -3)  # (hash, log)

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        if script is REFUND:  # it sets TTLs too (a window's end, in the injected time)
            return _text(await self.client.eval(PERSISTING_REFUND.source, len(keys), *keys, *args))
        if script is not CHECK:
            return _text(await self.client.eval(script.source, len(keys), *keys, *args))
        reply, hash_ttl, log_ttl = await self.client.eval(
            PERSISTING_CHECK.source, len(keys), *keys, *args
        )
        self.last_pttl = (hash_ttl, log_ttl)
        return _text(reply)

    async def call(self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await fn(*args)

    async def aclose(self) -> None:
        await self.client.aclose()


#: The check script, answering {decision, PTTL of the hash, PTTL of the log} and leaving
#: both keys without a TTL.
PERSISTING_CHECK = Script.from_source(
    "check",
    CHECK.source.rsplit("return decide(", 1)[0]
    + """
local reply = decide(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[4]), ARGV[2], now_us(ARGV[1]),
                     given_limits(6), tonumber(ARGV[3]), true, {wait = tonumber(ARGV[5]) * 1000})
local ttls = {redis.call('PTTL', KEYS[1]), redis.call('PTTL', KEYS[2])}
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
return {reply, ttls[1], ttls[2]}
""",
)


#: The refund script, leaving the key's hash and log without a TTL (as PERSISTING_CHECK).
PERSISTING_REFUND = Script.from_source(
    "refund",
    REFUND.source.rsplit("return decide(", 1)[0]
    + """
local reply = decide(KEYS[1], KEYS[2], KEYS[3], 0, 'd', now, given, 0, false)
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
return reply
""",
)


def _text(reply: Any) -> Any:
    """A reply as the gateway's lanes give it: text, not bytes."""
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, list):
        return [_text(r) for r in reply]
    return reply


LETTERS = {"token_bucket": "t", "sliding_window": "s", "fixed_window": "f", "gcra": "g"}


@dataclass
class Probe:
    """One key under test: runs checks and reads back the state the script keeps."""

    gateway: Gateway | PersistingGateway
    keys: KeySpace
    key: str = ""
    configured: bool = False  # the key's limit is set through the config path (no TTL)

    def __post_init__(self) -> None:
        self.key = self.key or f"k{uuid.uuid4().hex}"
        # An inline limit's hash lives INLINE_LIMIT_TTL_MS; 1 ms lets the state's own TTL
        # (the longer one) show, as for a key without a limit of its own.
        self.limiter = Limiter(cast("Gateway", self.gateway), self.keys, DEFAULT, inline_ttl_ms=1)

    @property
    def redis(self) -> Redis:
        return self.gateway.client

    async def stored_state(self, algorithm: Algorithm) -> Any:
        """The state in Redis, in the model's shape (None when there is none)."""
        if algorithm == "sliding_window":
            entries = await self.redis.zrange(self.keys.log(self.key), 0, -1, withscores=True)
            log, total = [], None
            for member, score in cast("list[tuple[bytes, float]]", entries):
                running, n = (int(v) for v in member.decode().split(":"))
                if total is not None:
                    assert running == total + n  # the running totals add up
                total = running
                log.append((int(score), n))
            return tuple(log) or None
        raw = await self.redis.hget(self.keys.limit(self.key), f"0{LETTERS[algorithm]}")
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        if algorithm == "gcra":
            return int(text)
        a, b = text.split(":")
        return int(a), int(b)

    def check_ttl(self, algorithm: Algorithm, wrote: bool, want_ms: int) -> None:
        """A write sets the model's TTL on the state's key (the log for a sliding window,
        else the hash, which never expires while it holds a configured limit); anything
        else leaves the (persisted) keys alone."""
        assert isinstance(self.gateway, PersistingGateway)
        hash_ttl, log_ttl = self.gateway.last_pttl
        sliding = algorithm == "sliding_window"
        ttl = log_ttl if sliding else hash_ttl
        if wrote and (sliding or not self.configured):
            assert want_ms - 50 <= ttl <= want_ms
        else:
            assert ttl in (-1, -2)  # no TTL since the last PERSIST, or no key


def assert_same(
    got: CheckResult, want: algorithms.Decision, limit: Limit, state: Any, now: int
) -> None:
    assert (got.allowed, got.limit, got.remaining) == (
        want.allowed,
        want.limit,
        max(0, want.remaining),  # the script reports no less than 0 (limit lowered)
    )
    assert (got.reset_after_ms, got.retry_after_ms) == (
        ceil_ms(want.reset_after_us),
        ceil_ms(want.retry_after_us),
    )
    if limit.algorithm == "sliding_window" and state:
        now = max(now, state[-1][0])  # the log never runs backwards
    assert got.now_ms == now // 1000
    burst = capacity(limit) if limit.algorithm in BUCKETS else 0
    assert (got.algorithm, got.requests, got.window_ms, got.burst) == (
        limit.algorithm,
        limit.requests,
        limit.window_ms,
        burst,
    )


async def step(probe: Probe, limit: Limit, state: Any, n: int, now: int, inline: bool) -> Any:
    """One check through the script and the model; both must agree. Returns the new state."""
    got = await probe.limiter.check(probe.key, n, limit if inline else None, now_us=now)
    want, new_state = model_check(limit, state, n, now)
    assert_same(got, want, limit, state, now)
    assert await probe.stored_state(limit.algorithm) == new_state
    probe.check_ttl(limit.algorithm, want.allowed and n > 0, expected_ttl_ms(limit, want))
    return new_state


async def compare(probe: Probe, scenario: tuple[Limit, int, list[tuple[int, int]]]) -> None:
    limit, now, steps = scenario
    state: Any = None
    for dt, n in steps:
        now += dt
        # Inline mode: the first check that spends stores the limit (a peek stores nothing),
        # the later ones use the stored one.
        state = await step(probe, limit, state, n, now, inline=True)
    stored = await ConfigStore(cast("Gateway", probe.gateway), probe.keys, 60_000).get(probe.key)
    assert stored == (limit if any(n > 0 for _, n in steps) else None)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_script_matches_model_over_random_sequences(
    algorithm: Algorithm, redis_url: str, keys: KeySpace
) -> None:
    # A sync test with one event loop for all its examples: hypothesis drives the examples,
    # each one a fresh key, and each runs to completion on the loop.
    with asyncio.Runner() as runner:
        client = PersistingGateway(redis_url)

        @EXAMPLES
        @given(scenario=scenarios(algorithm))
        def example(scenario: tuple[Limit, int, list[tuple[int, int]]]) -> None:
            runner.run(compare(Probe(client, keys), scenario))

        try:
            example()
        finally:
            runner.run(client.aclose())


class ScriptVersusModel(RuleBasedStateMachine):
    """Step by step: one key's limit (set through ConfigStore.apply), clock and checks.

    The limit may be replaced mid-way, as an operator would: the same algorithm keeps what
    was spent (``algorithms.keep_spent``), another algorithm starts fresh.
    """

    url = ""  # set by the test: the session Redis

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.gateway = PersistingGateway(self.url)
        self.keys = KeySpace(f"sm{uuid.uuid4().hex[:12]}")
        self.store = ConfigStore(cast("Gateway", self.gateway), self.keys, 60_000)
        self.probe = Probe(self.gateway, self.keys, configured=True)
        self.limit = DEFAULT
        self.state: Any = None
        self.now = T0

    def run(self, awaitable: Awaitable[Any]) -> Any:
        async def wrapper() -> Any:
            return await awaitable

        return self.runner.run(wrapper())

    def teardown(self) -> None:
        self.run(self.gateway.aclose())
        self.runner.close()

    async def _apply(self, limit: Limit) -> None:
        old = self.limit
        result = await self.store.apply(self.probe.key, limit, now_us=self.now)
        assert result.applied
        if limit.algorithm != old.algorithm or result.outcome == "created":
            self.state = None  # a new algorithm starts from a full limit
        else:  # what was spent stays spent
            self.state = algorithms.keep_spent(
                limit.algorithm, self.state, self.now, shape(old), shape(limit)
            )
        self.limit = limit

    @initialize(data=st.data())
    def set_limit(self, data: st.DataObject) -> None:
        limit = data.draw(limits())
        self.now = data.draw(starts(limit.window_ms))
        self.run(self._apply(limit))

    @rule(limit=limits())
    def replace_limit(self, limit: Limit) -> None:
        self.run(self._apply(limit))

    @rule(data=st.data())
    def lower_limit(self, data: st.DataObject) -> None:
        """Fewer requests (and burst) under the same algorithm: the state may now exceed
        the limit; remaining is then reported as 0, never negative."""
        old = self.limit
        requests = data.draw(st.integers(1, old.requests))
        burst = None if old.burst is None else data.draw(st.integers(1, old.burst))
        try:
            lowered = msgspec.structs.replace(old, requests=requests, burst=burst)
        except ValueError:  # e.g. gcra: a longer interval can exceed the exact range
            return
        self.run(self._apply(lowered))

    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        self.now += data.draw(time_steps(self.limit.window_ms))

    @rule(data=st.data())
    def check(self, data: st.DataObject) -> None:
        n = data.draw(token_counts(capacity(self.limit)))
        self.state = self.run(step(self.probe, self.limit, self.state, n, self.now, False))

    @rule()
    def status(self) -> None:
        """The status read (mode "p") answers as a peek and changes nothing."""
        got = self.run(self.probe.limiter.status(self.probe.key, now_us=self.now))
        want, after = model_check(self.limit, self.state, 0, self.now)
        assert_same(got, want, self.limit, self.state, self.now)
        self.state = after  # a sliding window drops entries that left the window
        self.probe.check_ttl(self.limit.algorithm, False, 0)

    @rule()
    def over_capacity(self) -> None:
        """Asking for more than the capacity is refused and changes nothing."""
        with pytest.raises(LimitValidationError):
            self.run(self.probe.limiter.check(self.probe.key, capacity(self.limit) + 1))

    @invariant()
    def state_matches(self) -> None:
        assert self.run(self.probe.stored_state(self.limit.algorithm)) == self.state


def test_state_machine_script_versus_model(redis_url: str) -> None:
    machine = type("Machine", (ScriptVersusModel,), {"url": redis_url})
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=40, stateful_step_count=25, deadline=None, database=None),
    )


async def poll(condition: Callable[[], Awaitable[bool]], timeout_s: float) -> float:
    """Seconds until ``condition()`` holds; fails after ``timeout_s``."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < timeout_s, "condition not met before the deadline"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


#: Short limits, long enough that a loaded machine reads a TTL before it lapses.
TINY = {
    "token_bucket": Limit(requests=2, window_ms=500, algorithm="token_bucket"),
    "gcra": Limit(requests=2, window_ms=500, algorithm="gcra"),
    "sliding_window": Limit(requests=2, window_ms=500, algorithm="sliding_window"),
    "fixed_window": Limit(requests=2, window_ms=500, algorithm="fixed_window"),
}


def state_key(keys: KeySpace, key: str, algorithm: Algorithm) -> str:
    """The Redis key holding ``key``'s state: the log of a sliding window, else its hash."""
    return keys.log(key) if algorithm == "sliding_window" else keys.limit(key)


@pytest.mark.anyio
@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_state_has_a_ttl_and_idle_state_disappears(
    algorithm: Algorithm, gateway: Gateway, redis: Redis, keys: KeySpace
) -> None:
    limit = TINY[algorithm]
    limiter = Limiter(gateway, keys, limit)  # a key on this limit keeps only its state
    key = f"k{uuid.uuid4().hex}"
    began = time.monotonic()
    first = await limiter.check(key, 1)  # server time: Redis's own clock
    while algorithm == "fixed_window" and first.reset_after_ms < 150:
        # Too close to the window's end to read its TTL before it lapses: use a new key in
        # the next window (windows are aligned to the epoch, so this is a matter of ms).
        key = f"k{uuid.uuid4().hex}"
        began = time.monotonic()
        first = await limiter.check(key, 1)
    assert first.allowed
    stored = state_key(keys, key, algorithm)
    pttl = await redis.pttl(stored)
    read_ms = (time.monotonic() - began) * 1000  # time passing on a slow machine
    assert pttl > 0
    # The state outlives the wait to a full limit (it must: until then it is not fresh)...
    assert pttl >= first.reset_after_ms - read_ms - 2
    # ...and goes soon after: the window, or the refill time plus the bucket's 1 s margin.
    assert pttl <= (first.reset_after_ms + 1000 if algorithm == "token_bucket" else 500)

    async def gone() -> bool:
        return await redis.exists(keys.limit(key), keys.log(key)) == 0

    await poll(gone, timeout_s=5)
    again = await limiter.check(key, 1)
    assert (again.allowed, again.remaining) == (True, first.remaining)  # as fresh as before


@pytest.mark.anyio
@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_a_configured_limit_never_expires_and_idle_state_is_as_fresh(
    algorithm: Algorithm, gateway: Gateway, redis: Redis, keys: KeySpace
) -> None:
    """A configured limit shares its key's hash with the state: the hash never expires, and
    state that has gone idle answers as a fresh key would."""
    limit = TINY[algorithm]
    key = f"k{uuid.uuid4().hex}"
    await ConfigStore(gateway, keys, 60_000).apply(key, limit, "1-0")
    limiter = Limiter(gateway, keys, DEFAULT)
    first = await limiter.check(key, 1)
    assert first.allowed
    assert await redis.pttl(keys.limit(key)) == -1
    await anyio.sleep(1.0 if algorithm != "token_bucket" else 0.6)  # two windows / refills
    again = await limiter.check(key, 1)
    assert (again.allowed, again.remaining) == (True, first.remaining)
    assert await redis.pttl(keys.limit(key)) == -1


@pytest.mark.anyio
async def test_script_flush_between_checks_is_harmless(
    gateway: Gateway, redis: Redis, keys: KeySpace
) -> None:
    probe = Probe(gateway, keys)
    limit = Limit(requests=3, window_ms=60_000, algorithm="gcra")
    first = await probe.limiter.check(probe.key, 1, limit)
    await redis.script_flush()
    assert await redis.script_exists(CHECK.sha) == [False]
    second = await probe.limiter.check(probe.key, 1, limit)  # NOSCRIPT: loaded, then run
    assert await redis.script_exists(CHECK.sha) == [True]
    assert (first.remaining, second.remaining) == (2, 1)  # the state carried over


@pytest.mark.anyio
@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_a_denied_check_leaves_redis_untouched(
    algorithm: Algorithm, gateway: Gateway, redis: Redis, keys: KeySpace
) -> None:
    limit = Limit(requests=3, window_ms=60_000, algorithm=algorithm)
    probe = Probe(gateway, keys)
    now = T0 + 30_000_000  # mid-window for the 60 s fixed window
    for _ in range(2):
        assert (await probe.limiter.check(probe.key, 1, limit, now_us=now)).allowed
    stored = state_key(keys, probe.key, algorithm)

    async def snapshot() -> tuple[Any, ...]:
        dumps = [await redis.dump(name) for name in keys.script_keys(probe.key)]
        names = sorted([name async for name in redis.scan_iter(f"{keys.prefix}:*")])
        return (*dumps, names)

    before = await snapshot()
    ttl_before = await redis.pttl(stored)
    assert await redis.exists(stored) == 1
    # Denied: 2 tokens when 1 is left, now and a little later (no refill reaches a token).
    for at in (now, now + 1_000, now + 5_000):
        denied = await probe.limiter.check(probe.key, 2, limit, now_us=at)
        assert not denied.allowed
        assert denied.remaining == 1
    # Refused outright: more than the capacity.
    with pytest.raises(LimitValidationError):
        await probe.limiter.check(probe.key, 4, limit, now_us=now)
    assert await snapshot() == before
    assert 0 < await redis.pttl(stored) <= ttl_before  # the TTL was not renewed
    # The token still there can be spent: the denials took nothing.
    assert (await probe.limiter.check(probe.key, 1, limit, now_us=now + 5_000)).allowed


@pytest.fixture
async def persisting(redis_url: str) -> AsyncIterator[PersistingGateway]:
    gateway = PersistingGateway(redis_url)
    yield gateway
    await gateway.aclose()


@pytest.mark.anyio
async def test_sliding_window_keeps_every_entry_when_the_clock_steps_back(
    persisting: PersistingGateway, keys: KeySpace
) -> None:
    """No admitted check is ever lost from the log, whatever the clock does.

    Entries are unique by their running total, and a clock stepping back writes at the
    newest entry's time (the log never runs backwards), so a later check can neither
    overwrite an entry nor slip in before one: tokens admitted at x-10 still count when the
    clock returns to x after a check at x+990 looked past them.
    """
    limit = Limit(requests=3, window_ms=1, algorithm="sliding_window")  # 1,000 µs
    probe = Probe(persisting, keys)  # its 1 ms TTL must not run out on the real clock
    x = T0 + 500_000
    answers = [
        await probe.limiter.check(probe.key, 2, limit, now_us=x - 10),
        await probe.limiter.check(probe.key, 1, limit, now_us=x),
        await probe.limiter.check(probe.key, 0, limit, now_us=x + 990),  # looks past x-10
        await probe.limiter.check(probe.key, 1, limit, now_us=x),  # the clock steps back
        await probe.limiter.check(probe.key, 1, limit, now_us=x + 991),  # x-10 has left
        await probe.limiter.check(probe.key, 2, limit, now_us=x + 991),
    ]
    assert [a.allowed for a in answers] == [True, True, True, False, True, False]
    assert [a.remaining for a in answers] == [1, 0, 2, 0, 1, 1]
    log = await probe.stored_state("sliding_window")
    assert log == ((x, 1), (x + 991, 1))  # in order; the write at x+991 dropped x-10
    newest = await persisting.client.zrange(keys.log(probe.key), -1, -1)
    assert newest == [b"0000000000000004:1"]  # running total: all 4 tokens admitted
