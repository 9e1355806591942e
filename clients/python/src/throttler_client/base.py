"""What the sync and async clients share: options, request headers, what each attempt's
outcome means, the failure policy and the denial cache. The subclasses add only the I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx

from throttler_client import calls
from throttler_client.attempts import Attempts, transport_error
from throttler_client.cache import DenialCache
from throttler_client.errors import ThrottlerUnavailableError
from throttler_client.models import CheckManyResult, Decision, Lease

if TYPE_CHECKING:
    from collections.abc import Iterable

    from throttler_client.calls import Call, CheckItem
    from throttler_client.errors import ThrottlerError

__all__ = ["VERSION", "ClientBase", "FailurePolicy", "Pause"]

FailurePolicy = Literal["open", "closed"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait this long, then send the call again."""

    seconds: float


try:
    VERSION = version("throttler-client")
except PackageNotFoundError:  # imported from a source tree that was never installed
    VERSION = "0.0.0+source"


class ClientBase:
    """Options, request headers, and every decision around a call (no I/O)."""

    def __init__(
        self,
        base_url: str = "http://localhost:8080",
        *,
        token: str | None = None,
        admin_token: str | None = None,
        timeout: float = 1.0,
        retries: int = 2,
        failure_policy: FailurePolicy = "closed",
        denial_cache: int = 10_000,
        pool_size: int = 100,
    ) -> None:
        """Options, keyword-only after ``base_url``:

        * ``token``: bearer token for checks (the service's ``CHECK_TOKEN``);
          ``admin_token`` for ``set_limit``, ``delete_limit`` and ``reset``
          (``ADMIN_TOKEN``), ``token`` when left out.
        * ``timeout``: seconds one call may take, retries included (default 1.0). The async
          client cancels the call at that deadline; the sync one gives each network phase
          (connect, send, read) of an attempt the time left, and starts no attempt or pause
          past it.
        * ``retries``: extra attempts where they are safe (default 2; see ``attempts``):
          a spending check is never sent twice.
        * ``failure_policy``: ``"closed"`` (default) raises ``ThrottlerUnavailableError``
          when the service cannot decide a check (no connection, no answer in time, a
          5xx); ``"open"`` answers such a check as allowed with ``enforced=False``.
        * ``denial_cache``: keys the local denial cache holds (default 10,000; 0 turns it
          off; see ``cache``).
        * ``pool_size``: connections kept open to the service (default 100).
        """
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if timeout <= 0:
            raise ValueError("timeout must be positive (seconds)")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        if failure_policy not in ("open", "closed"):
            raise ValueError(f"failure_policy must be 'open' or 'closed', got {failure_policy!r}")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.base_url = str(url).rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.failure_policy: FailurePolicy = failure_policy
        #: The local denial cache; ``.saved`` counts the checks it answered without a request.
        self.denial_cache = DenialCache(denial_cache)
        self._token = token
        self._admin_token = admin_token if admin_token is not None else token
        self._limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)
        self._open()

    def _open(self) -> None:
        """Create the HTTP client (the subclass's own kind)."""
        raise NotImplementedError

    def _request(self, call: Call[Any], timeout: float) -> httpx.Request:
        headers = {"Accept": "application/json", "User-Agent": f"throttler-client/{VERSION}"}
        token = self._admin_token if call.admin else self._token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        content = None
        if call.body is not None:
            headers["Content-Type"] = "application/json"
            content = json.dumps(call.body, separators=(",", ":")).encode()
        return httpx.Request(
            call.method,
            self.base_url + call.path,
            headers=headers,
            content=content,
            extensions={"timeout": httpx.Timeout(timeout).as_dict()},
        )

    def _attempts(self, call: Call[Any]) -> Attempts:
        return Attempts(self.timeout, self.retries, call.idempotent)

    @staticmethod
    def _settle(
        call: Call[T], attempts: Attempts, outcome: httpx.Response | httpx.TransportError
    ) -> T | Pause:
        """What one attempt's outcome means: the result, a pause before the next attempt, or
        (raised) the error to give up with."""
        if isinstance(outcome, httpx.TransportError):
            error, sent = transport_error(outcome)
        else:
            try:
                body: object = outcome.json()
            except ValueError:
                body = None
            try:
                return calls.read_answer(
                    call, calls.Answer(outcome.status_code, outcome.headers, body)
                )
            except ThrottlerUnavailableError as exc:
                error, sent = exc, True
        return Pause(attempts.after(error, sent=sent))

    # -- around checks: the denial cache and the failure policy --------------------------

    def _checked(self, key: str, tokens: int, decision: Decision, asked_at: float) -> Decision:
        self.denial_cache.remember(key, tokens, decision, asked_at)
        return decision

    def _unenforced(self, key: str, error: ThrottlerError) -> Decision:
        """A check the service could not decide: allowed if the policy is open, else raise."""
        if self.failure_policy == "open" and isinstance(error, ThrottlerUnavailableError):
            return Decision.unenforced(key)
        raise error

    def _unleased(self, key: str, error: ThrottlerError) -> Lease:
        """An acquire the service could not decide: no lease if the policy is open (allowed,
        nothing to release), else raise."""
        if self.failure_policy == "open" and isinstance(error, ThrottlerUnavailableError):
            return Lease.unenforced(key)
        raise error

    def _unenforced_many(
        self, items: Iterable[CheckItem], error: ThrottlerError
    ) -> CheckManyResult:
        if self.failure_policy == "open" and isinstance(error, ThrottlerUnavailableError):
            keys = [item if isinstance(item, str) else item[0] for item in items]
            return CheckManyResult(True, tuple(Decision.unenforced(k) for k in keys), False)
        raise error
