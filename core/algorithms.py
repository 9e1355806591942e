"""Pure-Python models of the four algorithms: the same formulas as the Lua scripts.

Each function takes the algorithm's state (``None`` for a fresh key), the tokens ``n``, the
current time ``now`` in microseconds and the limit, and returns the decision and the state
after it. The buckets also take ``wait_us``: the longest wait a reservation may take
(``max_wait_ms``; 0: none). Arithmetic mirrors the Lua line for line (Lua numbers are IEEE
doubles, as are Python floats), so the tests can demand the same decisions and the same numbers.
No I/O here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

__all__ = [
    "Decision",
    "FixedWindowState",
    "SlidingWindowState",
    "TokenBucketState",
    "fixed_window",
    "gcra",
    "keep_spent",
    "refilled",
    "sliding_window",
    "token_bucket",
]

MICRO = 1_000_000

TokenBucketState = tuple[int, int]  # (micro-tokens, credited-up-to time in us)
SlidingWindowState = tuple[tuple[int, int], ...]  # (time us, tokens) per admitted check
#: entries a write drops at most from the sliding-window log (sliding_window.lua: PRUNE)
SLIDING_PRUNE = 64
FixedWindowState = tuple[int, int]  # (window number, tokens spent in it)


@dataclass(frozen=True, slots=True)
class Decision:
    """One check's answer. Times are microseconds; the API rounds them up to ms."""

    allowed: bool
    limit: int
    remaining: int
    reset_after_us: int
    retry_after_us: int
    wait_us: int = 0  #: allowed by a reservation: start after this long


def _idiv(a: int, b: int) -> int:
    return (a - a % b) // b


def _micros_for(d: int, rate: float) -> int:
    """The fewest whole µs whose refill, ``floor(us * rate)``, reaches ``d`` micro-tokens."""
    us = math.ceil(d / rate)
    if math.floor(us * rate) < d:
        return us + 1
    if us > 0 and math.floor((us - 1) * rate) >= d:
        return us - 1
    return us


def refilled(
    state: TokenBucketState, now: int, requests: int, window_us: int, burst: int
) -> TokenBucketState:
    """A bucket's (micro-tokens, credited-up-to time) at ``now``, before a decision."""
    cap = burst * MICRO
    rate = requests * MICRO / window_us
    tokens, t = state
    if now > t:
        gained = math.floor((now - t) * rate)
        if tokens + gained >= cap:
            return (cap, now)
        if gained > 0:
            tokens += gained
            t += _micros_for(gained, rate)
    return (min(tokens, cap), t)


def token_bucket(
    state: TokenBucketState | None,
    n: int,
    now: int,
    requests: int,
    window_us: int,
    burst: int,
    wait_us: int = 0,
) -> tuple[Decision, TokenBucketState | None]:
    cap = burst * MICRO
    rate = requests * MICRO / window_us  # micro-tokens per microsecond
    tokens, t = cap, now
    held, since = cap, now  # the state as stored: waits count from it
    if state is not None:
        held, since = state
        tokens, t = held, since
        if now > t:
            gained = math.floor((now - t) * rate)
            if tokens + gained >= cap:
                tokens, t = cap, now
            elif gained > 0:
                tokens += gained
                t += _micros_for(gained, rate)
        tokens = min(tokens, cap)
    need = n * MICRO
    allowed = need <= tokens
    retry = 0
    new_state = state
    if allowed:
        if n > 0:
            tokens -= need
            held, since = tokens, t
            new_state = (tokens, t)
    else:
        retry = since + _micros_for(need - held, rate) - now
        if wait_us > 0 and retry <= wait_us:  # a reservation: spend now, start later
            allowed = True
            tokens -= need
            held, since = tokens, t
            if n > 0:  # a peek (n = 0) writes nothing, reserved or not
                new_state = (tokens, t)
    wait = 0
    if allowed:
        wait, retry = max(retry, 0), 0
    reset = 0
    if tokens < cap:
        reset = since + _micros_for(cap - held, rate) - now
    return Decision(allowed, burst, _idiv(tokens, MICRO), reset, retry, wait), new_state


def gcra(
    state: int | None,
    n: int,
    now: int,
    requests: int,
    window_us: int,
    burst: int,
    wait_us: int = 0,
) -> tuple[Decision, int | None]:
    interval = math.ceil(window_us / requests)
    tau = interval * burst
    stored = now if state is None else state
    tat = max(stored, now)
    new_tat = tat + n * interval
    allow_at = new_tat - tau
    allowed = now >= allow_at
    retry = 0
    new_state = state
    if allowed:
        if n > 0:
            new_state = stored = new_tat
    elif wait_us > 0 and allow_at - now <= wait_us:  # a reservation: the tat runs ahead
        allowed = True
        new_state = stored = new_tat
    else:
        retry = allow_at - now
        new_tat = tat
    wait = allow_at - now if allowed and allow_at > now else 0
    room = tau - (new_tat - now)
    remaining = _idiv(room, interval) if room > 0 else 0
    reset = max(0, stored - now)
    return Decision(allowed, burst, remaining, reset, retry, wait), new_state


def sliding_window(
    state: SlidingWindowState | None, n: int, now: int, requests: int, window_us: int
) -> tuple[Decision, SlidingWindowState | None]:
    """An exact log with one entry per admitted check, carrying its tokens. Only a check
    that spends writes: it drops at most SLIDING_PRUNE entries that left the window."""
    log = list(state or ())
    if log and log[-1][0] > now:
        now = log[-1][0]  # never let the log run backwards
    cutoff = now - window_us
    inside = [(t, k) for t, k in log if t > cutoff]
    count = sum(k for _, k in inside)
    allowed = count + n <= requests
    retry = 0
    if allowed:
        if n > 0:
            gone = sum(1 for t, _ in log if t <= cutoff)
            log = [*log[min(gone, SLIDING_PRUNE) :], (now, n)]
            inside.append((now, n))
            count += n
    else:
        must_leave, left = count + n - requests, 0
        for t, k in inside:  # the oldest entry whose leaving frees enough
            left += k
            if left >= must_leave:
                retry = t + window_us - now
                break
    reset = inside[-1][0] + window_us - now if count > 0 else 0
    return Decision(allowed, requests, requests - count, reset, retry), (tuple(log) or None)


def fixed_window(
    state: FixedWindowState | None, n: int, now: int, requests: int, window_us: int
) -> tuple[Decision, FixedWindowState | None]:
    w = _idiv(now, window_us)
    count = state[1] if state is not None and state[0] == w else 0
    ends = (w + 1) * window_us - now
    allowed = count + n <= requests
    new_state = state
    if allowed and n > 0:
        count += n
        new_state = (w, count)
    retry = 0 if allowed else ends
    reset = ends if count > 0 else 0
    return Decision(allowed, requests, requests - count, reset, retry), new_state


def keep_spent(
    algorithm: str,
    state: object,
    now: int,
    old: tuple[int, int, int],
    new: tuple[int, int, int],
) -> object:
    """The state after replacing a limit under the same algorithm: what was spent stays
    spent. ``old`` and ``new`` are (requests, window_us, burst); mirrors ``apply.lua``."""
    if state is None:
        return None
    if algorithm == "token_bucket":
        tokens, t = cast("TokenBucketState", state)
        old_cap, cap = old[2] * MICRO, new[2] * MICRO
        return (max(0, min(cap, tokens + cap - old_cap)), t)
    if algorithm == "gcra":
        tat = cast("int", state)
        spent = tat - now
        if spent <= 0:
            return state
        old_interval = math.ceil(old[1] / old[0])
        interval = math.ceil(new[1] / new[0])
        # In doubles, as the Lua computes it: the product may exceed 2^53 and round.
        return now + math.ceil(float(spent) * interval / old_interval)
    return state  # the windows keep their log or counter
