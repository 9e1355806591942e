"""The local denial cache: a denied key is answered locally until its retry time.

After the service denies ``tokens`` for a key with ``retry_after_ms = R``, a check of at
least as many tokens cannot succeed before R has passed — other callers can only spend
more — so the client answers it as denied without a request. R is counted from when the
denied request was *sent*, so the cache never denies past the service's own retry time.

The trade-off: a change that frees the key early — its limit raised or deleted, its usage
reset — by another client or process goes unseen until R has passed (this client's own
``set_limit``, ``delete_limit`` and ``reset`` forget the key at once). Checks of fewer
tokens than the denied one, peeks and ``check_many`` always ask the service.

The cache holds at most ``max_keys`` keys (0 turns it off); past that the least recently
denied is dropped. It is safe to share between threads.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from throttler_client.models import Decision

__all__ = ["DenialCache"]

_RATELIMIT_T = re.compile(r";t=\d+")


@dataclass(frozen=True, slots=True)
class _Denial:
    tokens: int
    decision: Decision
    asked_at: float  # clock seconds when the denied request was sent
    until: float  # asked_at + retry_after


class DenialCache:
    """Keys denied recently, each until its retry time; ``saved`` counts the checks it
    answered without a request."""

    def __init__(self, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic):
        if max_keys < 0:
            raise ValueError("max_keys must be 0 (off) or more")
        self.max_keys = max_keys
        self.saved = 0
        self._clock = clock
        self._denials: OrderedDict[str, _Denial] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._denials)

    def now(self) -> float:
        return self._clock()

    def lookup(self, key: str, tokens: int) -> Decision | None:
        """A denial for ``key`` if one is known to hold for ``tokens`` now, else None."""
        if tokens < 1 or not self._denials:
            return None
        with self._lock:
            denial = self._denials.get(key)
            if denial is None:
                return None
            now = self._clock()
            if now >= denial.until:
                del self._denials[key]
                return None
            if tokens < denial.tokens:
                return None
            self.saved += 1
        return _aged(denial, now)

    def remember(self, key: str, tokens: int, decision: Decision, asked_at: float) -> None:
        """Record a denial the service answered to a request sent at ``asked_at``."""
        if decision.allowed or decision.retry_after_ms <= 0 or not self.max_keys:
            return
        until = asked_at + decision.retry_after_ms / 1000
        with self._lock:
            self._denials[key] = _Denial(tokens, decision, asked_at, until)
            self._denials.move_to_end(key)
            while len(self._denials) > self.max_keys:
                self._denials.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._lock:
            self._denials.pop(key, None)


def _aged(denial: _Denial, now: float) -> Decision:
    """The remembered denial with its times counted down to ``now``."""
    elapsed_ms = math.floor((now - denial.asked_at) * 1000)
    retry_ms = max(1, denial.decision.retry_after_ms - elapsed_ms)
    retry_s = str(math.ceil(retry_ms / 1000))
    headers = dict(denial.decision.headers)
    if "retry-after" in headers:
        headers["retry-after"] = retry_s
    if "ratelimit" in headers:
        headers["ratelimit"] = _RATELIMIT_T.sub(f";t={retry_s}", headers["ratelimit"])
    return replace(
        denial.decision,
        retry_after_ms=retry_ms,
        reset_after_ms=max(0, denial.decision.reset_after_ms - elapsed_ms),
        cached=True,
        headers=headers,
    )
