"""Rate-limit response headers (ALGORITHMS.md "Headers"), as raw ASGI header pairs.

``RateLimit-Policy`` lists every limit the key was checked under (one item each, IETF
draft syntax); ``RateLimit`` and the ``X-RateLimit-*`` fields describe the limit that
decided. A policy item announces what a caller can spend at once (``q``: the capacity)
and over how long that refills (``w``: the window; for buckets and GCRA, the time to
refill the whole burst), so ``remaining`` never exceeds the ``q`` announced. What depends
only on the limits is encoded once per set of limits and reused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.limiter import CheckResult
    from schemas.limits import Limit

__all__ = ["Header", "rate_limit_headers"]

Header = tuple[bytes, bytes]
_Static = tuple[Header, list[tuple[Header, Header, str]]]

_static: dict[tuple[tuple[str, int, int, int], ...], _Static] = {}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _seconds(limit: Limit) -> int:
    """How long the limit takes to give back its whole capacity, in seconds (>= 1)."""
    if limit.algorithm in ("token_bucket", "gcra"):
        refill_ms = _ceil_div(limit.capacity * limit.window_ms, limit.requests)
        return max(1, _ceil_div(refill_ms, 1000))
    return max(1, _ceil_div(limit.window_ms, 1000))


def _for_limits(limits: tuple[Limit, ...]) -> _Static:
    """RateLimit-Policy, and per limit (X-RateLimit-Limit, X-RateLimit-Window, its name)."""
    cache_key = tuple((x.algorithm, x.requests, x.window_ms, x.capacity) for x in limits)
    found = _static.get(cache_key)
    if found is None:
        if len(_static) >= 10_000:
            _static.clear()
        items, per_limit = [], []
        for i, limit in enumerate(limits):
            name = f'"{limit.algorithm}"' if len(limits) == 1 else f'"{i}-{limit.algorithm}"'
            items.append(f"{name};q={limit.capacity};w={_seconds(limit)}")
            per_limit.append(
                (
                    (b"x-ratelimit-limit", str(limit.capacity).encode()),
                    (b"x-ratelimit-window", str(limit.window_ms).encode()),
                    name,
                )
            )
        found = _static[cache_key] = ((b"ratelimit-policy", ", ".join(items).encode()), per_limit)
    return found


def rate_limit_headers(result: CheckResult) -> list[Header]:
    """``X-RateLimit-*``, ``Retry-After`` (denied only) and the IETF ``RateLimit`` fields."""
    policy, per_limit = _for_limits(result.limits)
    limit, window, name = per_limit[result.index]
    remaining = str(result.remaining)
    reset_s = _ceil_div(result.now_ms + result.reset_after_ms, 1000)
    if result.allowed:
        until_more = str(_ceil_div(result.reset_after_ms, 1000))
    else:
        until_more = str(max(1, _ceil_div(result.retry_after_ms, 1000)))
    headers = [
        limit,
        (b"x-ratelimit-remaining", remaining.encode()),
        (b"x-ratelimit-reset", str(reset_s).encode()),
        window,
        policy,
        (b"ratelimit", f"{name};r={remaining};t={until_more}".encode()),
    ]
    if not result.allowed:
        headers.append((b"retry-after", until_more.encode()))
    return headers
