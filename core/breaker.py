"""A circuit breaker for Redis calls.

After ``failures`` consecutive failures the circuit opens: calls fail at once, without
touching the network, so a dead Redis costs a check microseconds instead of a timeout.
After ``cooldown`` one call is let through as a probe (half-open); its success closes the
circuit, its failure opens it for another cooldown.

The gateway keeps one breaker per Redis node, so ``throttler_circuit_open`` counts the open
ones (0 or 1 off a cluster).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

from core.errors import RedisUnavailableError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from core.metrics import Metrics

__all__ = ["CircuitBreaker"]

T = TypeVar("T")


class CircuitBreaker:
    __slots__ = (
        "_clock",
        "_cooldown",
        "_failures",
        "_metrics",
        "_opened_at",
        "_probing",
        "_threshold",
    )

    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failures
        self._cooldown = cooldown_s
        self._metrics = metrics
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def admit(self) -> None:
        """Raise RedisUnavailableError while open; half-open, let one probe through."""
        if self._opened_at is None:
            return
        if self._probing or self._clock() - self._opened_at < self._cooldown:
            raise RedisUnavailableError("circuit open: Redis failed repeatedly; not calling it")
        self._probing = True  # half-open: this call is the probe

    def abandon(self) -> None:
        """A call let through ended without a verdict (cancelled): another may probe."""
        self._probing = False

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        if self._opened_at is not None:
            self._opened_at = None
            if self._metrics is not None:
                self._metrics.circuit_open.dec()

    def forget(self) -> None:
        """The node is gone from the topology: an open circuit no longer counts."""
        if self._opened_at is not None:
            self._opened_at = None
            if self._metrics is not None:
                self._metrics.circuit_open.dec()

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._threshold:
            self._probing = False
            if self._opened_at is None and self._metrics is not None:
                self._metrics.circuit_open.inc()
            self._opened_at = self._clock()

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` unless the circuit is open; RedisUnavailableError counts as failure."""
        self.admit()
        try:
            result = await fn()
        except RedisUnavailableError:
            self.failure()
            raise
        except BaseException:
            self.abandon()  # cancelled or a bug: not a verdict on Redis
            raise
        self.success()
        return result
