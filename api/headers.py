"""Rate-limit response headers (ALGORITHMS.md "Headers"), as raw ASGI header pairs.

What depends only on the limit (``X-RateLimit-Limit``, ``X-RateLimit-Window``,
``RateLimit-Policy`` and the policy's name) is encoded once per limit and reused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.limiter import CheckResult
    from schemas.limits import Limit

__all__ = ["Header", "rate_limit_headers"]

Header = tuple[bytes, bytes]

_static: dict[tuple[str, int, int, int], tuple[Header, Header, Header, str]] = {}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _for_limit(rule: Limit) -> tuple[Header, Header, Header, str]:
    """(X-RateLimit-Limit, X-RateLimit-Window, RateLimit-Policy, the policy's name)."""
    cache_key = (rule.algorithm, rule.requests, rule.window_ms, rule.capacity)
    found = _static.get(cache_key)
    if found is None:
        if len(_static) >= 10_000:
            _static.clear()
        name = f'"{rule.algorithm}"'
        window_s = max(1, _ceil_div(rule.window_ms, 1000))
        found = _static[cache_key] = (
            (b"x-ratelimit-limit", str(rule.capacity).encode()),
            (b"x-ratelimit-window", str(rule.window_ms).encode()),
            (b"ratelimit-policy", f"{name};q={rule.requests};w={window_s}".encode()),
            name,
        )
    return found


def rate_limit_headers(result: CheckResult) -> list[Header]:
    """``X-RateLimit-*``, ``Retry-After`` (denied only) and the IETF ``RateLimit`` fields."""
    limit, window, policy, name = _for_limit(result.rule)
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
