"""Redis outages as an operator wants to read them: one line when one starts, one when it
ends, and retries that back off in between (not a warning every half second)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging

__all__ = ["Outage", "backoff"]


def backoff(failures: int, first_s: float = 0.5, most_s: float = 5.0) -> float:
    """The wait after the ``failures``-th failure in a row: doubling from ``first_s``."""
    return min(most_s, first_s * 2.0 ** max(0, failures - 1))


class Outage:
    """Whether one component can reach Redis; logs only the changes."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self.down = False
        self.failures = 0  # failures in a row (the backoff grows with them)

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns how long to wait before the next try."""
        self.failures += 1
        if not self.down:
            self.down = True
            self._log.warning(
                "%s: redis unavailable (%s); retrying with backoff, quietly, until it answers",
                self._what,
                exc,
            )
        return backoff(self.failures)

    def recovered(self) -> None:
        if self.down:
            self._log.info(
                "%s: redis answers again after %d failed attempts", self._what, self.failures
            )
        self.down = False
        self.failures = 0
