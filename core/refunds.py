"""Pure-Python models of refunds (``core/lua/refund.lua``): the state of one limit after
``n`` spent tokens are given back at ``now`` (µs). A fresh limit (``None``) is full: nothing
to give back. Never above the limit's capacity. No I/O here."""

from __future__ import annotations

import math

from core.algorithms import (
    MICRO,
    FixedWindowState,
    SlidingWindowState,
    TokenBucketState,
    refilled,
)

__all__ = ["refund_fixed_window", "refund_gcra", "refund_sliding_window", "refund_token_bucket"]


def refund_token_bucket(
    state: TokenBucketState | None, n: int, now: int, requests: int, window_us: int, burst: int
) -> TokenBucketState | None:
    """The refill up to ``now``, then ``n`` tokens more, at most the burst."""
    if state is None:
        return None
    tokens, t = refilled(state, now, requests, window_us, burst)
    tokens += n * MICRO
    if tokens >= burst * MICRO:
        return (burst * MICRO, now)
    return (tokens, t)


def refund_gcra(state: int | None, n: int, now: int, requests: int, window_us: int) -> int | None:
    """The theoretical arrival time moves back ``n`` intervals, never before now."""
    if state is None:
        return None
    return max(now, state - n * math.ceil(window_us / requests))


def refund_fixed_window(
    state: FixedWindowState | None, n: int, now: int, window_us: int
) -> FixedWindowState | None:
    """The current window's count less ``n`` (at least 0); an ended window is untouched."""
    if state is None or state[0] != (now - now % window_us) // window_us:
        return state
    return (state[0], max(0, state[1] - n))


def refund_sliding_window(
    state: SlidingWindowState | None, n: int, now: int, window_us: int
) -> SlidingWindowState | None:
    """The newest ``n`` tokens of the log leave it (the last entry taken shrinks), among the
    entries the window still counts."""
    log = list(state or ())
    left = n
    while left > 0 and log and log[-1][0] > now - window_us:
        t, k = log.pop()
        if k > left:
            log.append((t, k - left))
            left = 0
        else:
            left -= k
    return tuple(log) or None
