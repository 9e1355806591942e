"""``ThrottlerClient``: the blocking client (httpx.Client underneath)."""

from __future__ import annotations

import time
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, TypeVar

import httpx

from throttler_client import calls
from throttler_client.base import ClientBase, Pause
from throttler_client.errors import ThrottlerError, ThrottlerUnavailableError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from types import TracebackType
    from typing import Self

    from throttler_client.attempts import Attempts
    from throttler_client.calls import Call, CheckItem
    from throttler_client.models import (
        CheckManyResult,
        Decision,
        Lease,
        Limit,
        LimitChange,
        Policy,
        PolicyChange,
    )

__all__ = ["ThrottlerClient"]

T = TypeVar("T")


class ThrottlerClient(ClientBase):
    """A blocking client of one Throttler service; thread-safe, keeps connections open.

    Use it as a context manager, or call :meth:`close`.
    """

    def _open(self) -> None:
        self._http = httpx.Client(limits=self._limits, timeout=self.timeout)

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, call: Call[T]) -> T:
        attempts = self._attempts(call)
        while True:
            step = self._settle(call, attempts, self._send(call, attempts))
            if not isinstance(step, Pause):
                return step
            time.sleep(step.seconds)

    def _send(self, call: Call[T], attempts: Attempts) -> httpx.Response | httpx.TransportError:
        try:
            return self._http.send(self._request(call, attempts.time_left()))
        except httpx.TransportError as exc:
            return exc

    def check(self, key: str, tokens: int = 1, max_wait_ms: int = 0) -> Decision:
        """Spend ``tokens`` of ``key``'s limit; a denial is a Decision, not an error.

        With ``max_wait_ms``, a check that would be denied but whose tokens come within
        that time reserves them (token_bucket and gcra limits): this call sleeps the
        ``wait_ms`` of the reservation, then answers allowed (``decision.wait_ms`` says how
        long it slept)."""
        if not max_wait_ms and (cached := self.denial_cache.lookup(key, tokens)):
            return cached
        asked_at = self.denial_cache.now()
        try:
            decision = self._run(calls.check(key, tokens, max_wait_ms))
        except ThrottlerError as exc:
            return self._unenforced(key, exc)
        if decision.wait_ms:
            time.sleep(decision.wait_ms / 1000)
        return self._checked(key, tokens, decision, asked_at)

    @contextmanager
    def acquire(self, key: str, ttl_ms: int | None = None) -> Iterator[Lease]:
        """A lease of ``key``'s concurrency limit for the block, released when it ends
        (however it ends)::

            with throttler.acquire("reports:acme") as lease:
                if not lease.allowed:
                    ...  # answer 429, retry after lease.retry_after_ms
                ...  # at most `requests` blocks run at once for this key

        A denial is a Lease with ``allowed`` false, not an error; a key without a
        concurrency limit raises ``NoConcurrencyLimitError``. ``ttl_ms`` shortens the
        lease's lifetime (the limit's ``window_ms`` at most). If the release cannot reach
        the service, the lease ends by itself when it expires."""
        try:
            lease = self._run(calls.acquire(key, ttl_ms))
        except ThrottlerError as exc:
            lease = self._unleased(key, exc)
        try:
            yield lease
        finally:
            if lease.id:
                with suppress(ThrottlerUnavailableError):
                    self._run(calls.release(key, lease.id))

    def release(self, key: str, lease: str) -> bool:
        """Give back a lease now (``acquire`` does it for you); False when ``key`` held no
        such lease any more (released before, or expired)."""
        return self._run(calls.release(key, lease))

    def refund(self, key: str, tokens: int) -> Decision:
        """Give back up to ``tokens`` spent tokens to every rate limit of ``key`` (never
        above a limit's capacity): check the most a job may cost, refund what it did not
        use. The Decision is what is left afterwards."""
        try:
            return self._run(calls.refund(key, tokens))
        finally:
            self.denial_cache.forget(key)

    def peek(self, key: str) -> Decision:
        """``key``'s state now (``remaining``, ``limit``, ``reset_after_ms``), spending
        nothing: a check of 0 tokens, so ``allowed`` is true whatever ``remaining`` is."""
        try:
            return self._run(calls.check(key, 0))
        except ThrottlerError as exc:
            return self._unenforced(key, exc)

    def check_many(
        self, items: Iterable[CheckItem], all_or_nothing: bool = False
    ) -> CheckManyResult:
        """Many checks in one request: ``items`` are keys or ``(key, tokens)`` pairs."""
        items = list(items)
        try:
            return self._run(calls.check_many(items, all_or_nothing))
        except ThrottlerError as exc:
            return self._unenforced_many(items, exc)

    def set_limit(self, key: str, limit: Limit) -> LimitChange:
        """Create or replace ``key``'s limit (admin)."""
        try:
            return self._run(calls.set_limit(key, limit))
        finally:
            self.denial_cache.forget(key)

    def delete_limit(self, key: str) -> LimitChange:
        """Remove ``key``'s limit (admin); ``NotFoundError`` when it had none."""
        try:
            return self._run(calls.delete_limit(key))
        finally:
            self.denial_cache.forget(key)

    def set_limits(self, key: str, limits: Sequence[Limit], shadow: bool = False) -> LimitChange:
        """Give ``key`` several limits (1-8; a check must pass every one) (admin)."""
        try:
            return self._run(calls.set_limits(key, limits, shadow))
        finally:
            self.denial_cache.forget(key)

    def put_policy(self, policy: Policy) -> PolicyChange:
        """Create or replace ``policy`` (admin); keys it matches follow it within the
        service's propagation bound."""
        return self._run(calls.put_policy(policy))

    def get_policy(self, name: str) -> Policy:
        """The policy ``name`` (admin); ``NotFoundError`` when there is none."""
        return self._run(calls.get_policy(name))

    def list_policies(self) -> list[Policy]:
        """Every policy (admin)."""
        return self._run(calls.list_policies())

    def delete_policy(self, name: str) -> PolicyChange:
        """Remove the policy ``name`` (admin); ``NotFoundError`` when there is none."""
        return self._run(calls.delete_policy(name))

    def reset(self, key: str) -> None:
        """Clear ``key``'s usage and keep its limits (admin; ``POST /rate-limit/{key}/reset``,
        which services before that route answer with ``NotFoundError``)."""
        try:
            self._run(calls.reset(key))
        finally:
            self.denial_cache.forget(key)
