"""When to try a call again, and for how long: the retry policy, with no I/O.

A call has one deadline (``timeout`` seconds after it starts), retries included. It is
sent again only when that cannot change what happens:

* the request never reached the service (connection refused, connect timeout, no free
  connection in the pool): any call;
* it may have reached the service (a read timeout, a dropped connection, a 5xx answer):
  only calls that are harmless to repeat — peeks, setting a limit, a reset. A check that
  spends tokens is never sent twice: the first one may have spent them.

Pauses between attempts double from ``BACKOFF_S`` and never run past the deadline.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx

from throttler_client.errors import ThrottlerTimeoutError, ThrottlerUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable

    from throttler_client.errors import ThrottlerError

__all__ = ["BACKOFF_S", "Attempts", "transport_error"]

BACKOFF_S = 0.05
#: Transport errors raised before any byte of the request left this process.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def transport_error(exc: httpx.TransportError) -> tuple[ThrottlerUnavailableError, bool]:
    """The client's error for an httpx transport error, and whether the request may have
    reached the service."""
    kind = ThrottlerTimeoutError if isinstance(exc, httpx.TimeoutException) else None
    message = f"throttler unreachable: {type(exc).__name__}: {exc}".rstrip(": ")
    error = (kind or ThrottlerUnavailableError)(message, code="unreachable")
    error.__cause__ = exc
    return error, not isinstance(exc, _NOT_SENT)


class Attempts:
    """The attempts of one call: its deadline and whether another attempt may follow."""

    def __init__(
        self,
        timeout: float,
        retries: int,
        idempotent: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._deadline = clock() + timeout
        self._timeout = timeout
        self._left = retries
        self._idempotent = idempotent
        self._pause = BACKOFF_S

    def time_left(self) -> float:
        """Seconds until the deadline; ThrottlerTimeoutError when it has passed."""
        left = self._deadline - self._clock()
        if left <= 0:
            raise ThrottlerTimeoutError(
                f"no answer from throttler within {self._timeout} s", code="timeout"
            )
        return left

    def after(self, error: ThrottlerError, *, sent: bool) -> float:
        """The pause before the next attempt after ``error``; raises it when there is none
        (no retries left, not safe to repeat, not unavailability, or no time left)."""
        retry = isinstance(error, ThrottlerUnavailableError) and (self._idempotent or not sent)
        pause = self._pause
        if not retry or self._left <= 0 or self._clock() + pause >= self._deadline:
            if isinstance(error, ThrottlerUnavailableError) and self._clock() >= self._deadline:
                raise ThrottlerTimeoutError(
                    f"no answer from throttler within {self._timeout} s ({error.message})",
                    code="timeout",
                ) from error
            raise error
        self._left -= 1
        self._pause *= 2
        return pause
