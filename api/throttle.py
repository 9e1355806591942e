"""Throttler's own limits on its callers, per client address, decided by its own limiter.

* Failed authentication (a wrong bearer token or notification ticket): ``AUTH_FAILURES``
  per ``AUTH_FAILURE_WINDOW_MS`` per address. Beyond it every request of that address to a
  guarded route answers 429 (``too_many_auth_failures``), the right token included, until
  the bucket has refilled: a guesser cannot tell a right guess from a wrong one.
* Config changes (POST, PUT and DELETE on admin routes): ``MUTATIONS`` per
  ``MUTATION_WINDOW_MS`` per address; beyond it 429 (``too_many_changes``).

Each is a token bucket in Redis under a key no caller can name (it holds a ``/``, which
key validation refuses), so every API process shares it. A process that saw a denial
remembers it in memory until the bucket's retry time: an address locked out costs no
Redis call, and a request that authenticates costs one dictionary lookup at most. Redis
being unavailable (or slower than half of ``REDIS_TIMEOUT_MS``) never lets a failed attempt
through: it is refused (401) as always, uncounted; a change goes on to its own outcome.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import anyio
from litestar.exceptions import HTTPException

from core.errors import RedisUnavailableError
from core.policies import Resolved
from schemas.limits import Limit

if TYPE_CHECKING:
    from collections.abc import Callable

    from core.limiter import Limiter

__all__ = ["AddressThrottle", "ListenerSlots", "Throttled", "client_address"]

_REMEMBERED = 10_000  # locked addresses kept in memory (expired ones are dropped first)


class Throttled(HTTPException):
    """429 with its own error code and ``Retry-After`` (mapped in api.errors)."""

    status_code = 429

    def __init__(self, code: str, message: str, retry_after_ms: int) -> None:
        seconds = str(max(1, math.ceil(retry_after_ms / 1000)))
        super().__init__(detail=message, headers={"Retry-After": seconds})
        self.code = code
        self.retry_after_ms = retry_after_ms


def client_address(scope: Any) -> str:
    """The client's address as the server saw it (a trusted proxy's X-Forwarded-For is
    applied by the server only for TRUSTED_PROXIES)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class AddressThrottle:
    """One limit per client address, e.g. ``AddressThrottle(limiter, "auth-failures", …)``."""

    __slots__ = ("_limiter", "_locked", "_name", "_resolved", "_wait_s")

    def __init__(
        self, limiter: Limiter, name: str, requests: int, window_ms: int, *, wait_s: float = 0.25
    ) -> None:
        self._limiter = limiter
        self._name = name
        # How long a spend may wait for Redis: a hung Redis must not add a whole timeout
        # (and a breaker failure) to every change before the change's own 503.
        self._wait_s = wait_s
        self._resolved = Resolved.of(None, (Limit(requests=requests, window_ms=window_ms),))
        self._locked: dict[str, float] = {}  # address -> time.monotonic() the lock ends

    def locked(self, address: str) -> int | None:
        """How long ``address`` stays locked out here (ms), or None. No I/O."""
        if not self._locked:
            return None
        until = self._locked.get(address)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            del self._locked[address]
            return None
        return math.ceil(left * 1000)

    async def spend(self, address: str) -> int | None:
        """Spend one from ``address``'s bucket: the retry time (ms) when it is empty (and
        the address is locked out here until then), else None (also when Redis cannot
        answer: the caller's own outcome stands)."""
        result = None
        with anyio.move_on_after(self._wait_s):  # cancelled: no verdict on Redis's health
            try:
                result = await self._limiter.spend_under(
                    f"throttler/{self._name}/{address}", self._resolved
                )
            except RedisUnavailableError:
                return None
        if result is None:
            return None
        if result.allowed:
            return None
        retry = max(1, result.retry_after_ms)
        if len(self._locked) >= _REMEMBERED:
            now = time.monotonic()
            self._locked = {a: t for a, t in self._locked.items() if t > now}
            if len(self._locked) >= _REMEMBERED:
                self._locked.clear()
        self._locked[address] = time.monotonic() + retry / 1000
        return retry


class ListenerSlots:
    """Open notification streams (SSE and WebSocket) in this process: at most ``total``,
    and ``per_client`` per client address. In memory: a stream lives in one process."""

    __slots__ = ("_by_address", "_open", "per_client", "total")

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._open = 0
        self._by_address: dict[str, int] = {}

    def take(self, address: str) -> Callable[[], None]:
        """A slot for ``address`` (call the result, once or more, to give it back); raises
        :class:`Throttled` when none is left."""
        if self._open >= self.total:
            raise Throttled(
                "too_many_listeners",
                f"this server has {self.total} notification streams open (MAX_LISTENERS)",
                1000,
            )
        held = self._by_address.get(address, 0)
        if held >= self.per_client:
            raise Throttled(
                "too_many_listeners",
                f"this address has {held} notification streams open here "
                "(MAX_LISTENERS_PER_CLIENT)",
                1000,
            )
        self._open += 1
        self._by_address[address] = held + 1
        given = False

        def give_back() -> None:
            nonlocal given
            if given:
                return
            given = True
            self._open -= 1
            left = self._by_address[address] - 1
            if left:
                self._by_address[address] = left
            else:
                del self._by_address[address]

        return give_back

    @property
    def open(self) -> int:
        return self._open
