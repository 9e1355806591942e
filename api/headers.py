"""Rate-limit response headers (ALGORITHMS.md "Headers")."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.limiter import CheckResult

__all__ = ["rate_limit_headers"]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def rate_limit_headers(result: CheckResult) -> dict[str, str]:
    """``X-RateLimit-*``, ``Retry-After`` (denied only) and the IETF ``RateLimit`` fields."""
    reset_s = _ceil_div(result.now_ms + result.reset_after_ms, 1000)
    policy = result.algorithm
    window_s = max(1, _ceil_div(result.window_ms, 1000))
    if result.allowed:
        until_more = _ceil_div(result.reset_after_ms, 1000)
    else:
        until_more = max(1, _ceil_div(result.retry_after_ms, 1000))
    headers = {
        "X-RateLimit-Limit": str(result.limit),
        "X-RateLimit-Remaining": str(result.remaining),
        "X-RateLimit-Reset": str(reset_s),
        "X-RateLimit-Window": str(result.window_ms),
        "RateLimit-Policy": f'"{policy}";q={result.requests};w={window_s}',
        "RateLimit": f'"{policy}";r={result.remaining};t={until_more}',
    }
    if not result.allowed:
        headers["Retry-After"] = str(until_more)
    return headers
