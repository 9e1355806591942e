"""HTTP request and response bodies."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.limits import (
    KEY_PATTERN,
    MAX_REQUESTS,
    MAX_WINDOW_MS,
    Algorithm,
    Burst,
    Calendar,
    KeyLimits,
    Limit,
    Limits,
    Requests,
    Shadow,
    WindowMs,
)

__all__ = [
    "LEASE_PATTERN",
    "AcceptedResponse",
    "AcquireAllowed",
    "AcquireRequest",
    "BatchItem",
    "BatchRequest",
    "BatchResponse",
    "BatchResult",
    "CheckAllowed",
    "CheckDenied",
    "CheckRequest",
    "ErrorResponse",
    "HealthResponse",
    "KeyLimitsItem",
    "KeyList",
    "LimitBody",
    "LimitStatus",
    "LimitUsage",
    "PolicyList",
    "PolicyView",
    "ReadyResponse",
    "RefundRequest",
    "RefundResponse",
    "ReleaseRequest",
    "ReleaseResponse",
    "ResetResponse",
    "TicketResponse",
]

#: A lease id as acquire hands them out (22 URL-safe characters; up to 64 accepted).
LEASE_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$(?!\n)"

Tokens = Annotated[
    int,
    msgspec.Meta(
        ge=0,
        le=MAX_REQUESTS,
        description="Tokens to spend (default 1); 0 peeks without consuming.",
    ),
]


MaxWaitMs = Annotated[
    int,
    msgspec.Meta(
        ge=0,
        le=MAX_WINDOW_MS,
        description="Reserve instead of refusing: a check that would be denied, but whose "
        "tokens come within this many ms, spends them now and is answered 200 with `wait_ms` "
        "(start after it). token_bucket and gcra limits only; 0 (default): never wait.",
    ),
]


class CheckRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of a check. Every field is optional; an empty body spends one token.

    ``requests`` and ``window_ms`` (with optional ``algorithm`` and ``burst``) create the
    key's limit when it has none; an existing limit always wins.
    """

    tokens: Tokens = 1
    requests: Requests | None = None
    window_ms: WindowMs | None = None
    algorithm: Algorithm | None = None
    burst: Burst | None = None
    max_wait_ms: MaxWaitMs = 0

    def inline_limit(self) -> Limit | None:
        """The inline limit this body carries, if any (validated)."""
        if self.requests is None and self.window_ms is None:
            if self.algorithm is not None or self.burst is not None:
                raise ValueError("algorithm and burst need requests and window_ms")
            return None
        if self.requests is None or self.window_ms is None:
            raise ValueError("an inline limit needs both requests and window_ms")
        return Limit(
            requests=self.requests,
            window_ms=self.window_ms,
            algorithm=self.algorithm or "token_bucket",
            burst=self.burst,
        )

    def __post_init__(self) -> None:
        self.inline_limit()


PolicyField = Annotated[
    str | None,
    msgspec.Meta(description="The policy the key was checked under (absent: none applied)."),
]
ShadowField = Annotated[
    Literal["denied"] | None,
    msgspec.Meta(
        description="`denied`: a limit in shadow mode would have denied this check (it was "
        "allowed); absent otherwise."
    ),
]


WaitField = Annotated[
    int | None,
    msgspec.Meta(
        description="Present when the check asked for `max_wait_ms`: the tokens are yours, "
        "start after this many ms (0: now).",
    ),
]


class CheckAllowed(msgspec.Struct, omit_defaults=True):
    """An allowed check. ``enforced`` is present (false) only when Redis could not be asked
    and ``FAILURE_POLICY=open`` let the request through without a decision."""

    allowed: bool
    remaining: int
    limit: int
    reset_after_ms: int
    enforced: bool = True
    policy: PolicyField = None
    shadow: ShadowField = None
    wait_ms: WaitField = None


class AcquireRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of an acquire (optional)."""

    ttl_ms: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=MAX_WINDOW_MS,
                description="The lease's lifetime unless released first; at most the "
                "concurrency limit's window_ms (the default; longer asks get that).",
            ),
        ]
        | None
    ) = None


class AcquireAllowed(msgspec.Struct, omit_defaults=True):
    """A lease taken. ``remaining`` and ``limit`` are those of the limit with the least
    left (usually the concurrency limit: free slots and slots). Release it with
    ``POST /rate-limit/{key}/release``; unreleased, it ends after ``expires_in_ms``."""

    allowed: bool
    lease: Annotated[
        str, msgspec.Meta(description="The lease id (empty when not enforced: nothing to release).")
    ]
    expires_in_ms: int
    remaining: int
    limit: int
    enforced: bool = True
    policy: PolicyField = None


class ReleaseRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of a release: the lease an acquire of this key handed out."""

    lease: Annotated[
        str,
        msgspec.Meta(
            pattern=LEASE_PATTERN, description="The lease id.", examples=["Zk3c9yHc0mN2cQ1-rT5w8A"]
        ),
    ]


class ReleaseResponse(msgspec.Struct):
    key: str
    released: bool


class RefundRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of a refund: how many spent tokens to give back."""

    tokens: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=MAX_REQUESTS,
            description="Tokens to give back to every rate limit of the key (at most what "
            "was spent: a limit never goes above its capacity).",
            examples=[3],
        ),
    ]


class RefundResponse(msgspec.Struct, omit_defaults=True):
    """What is left after the refund, of the limit with the least left (as a peek)."""

    remaining: int
    limit: int
    reset_after_ms: int
    policy: PolicyField = None


class CheckDenied(msgspec.Struct, omit_defaults=True):
    allowed: bool
    remaining: int
    limit: int
    retry_after_ms: int
    reset_after_ms: int
    error: Literal["rate_limit_exceeded"]
    message: str
    policy: PolicyField = None


class LimitUsage(msgspec.Struct):
    """One limit a key is checked under, and what is left of it now."""

    requests: int
    window_ms: int
    algorithm: Algorithm
    burst: int | None
    limit: int
    remaining: int
    reset_after_ms: int
    calendar: Calendar | msgspec.UnsetType = msgspec.UNSET


class LimitStatus(msgspec.Struct):
    """The limits a key is checked under, where they come from, and its live usage (nothing
    consumed or created). The top-level limit fields describe the limit with the least
    remaining (the one a check would hit first)."""

    key: str
    requests: int
    window_ms: int
    algorithm: Algorithm
    burst: int | None
    limit: int
    remaining: int
    reset_after_ms: int
    source: Literal["key", "policy", "default"]
    policy: str | None
    shadow: bool
    limits: list[LimitUsage]


class KeyLimitsItem(msgspec.Struct):
    """A key with limits of its own."""

    key: str
    limits: list[Limit]
    shadow: bool
    inline: bool


class KeyList(msgspec.Struct):
    """A page of keys with limits of their own; ``next_cursor`` continues (null: done)."""

    items: list[KeyLimitsItem]
    next_cursor: str | None


class ResetResponse(msgspec.Struct):
    key: str
    reset: bool


class PolicyView(msgspec.Struct):
    """A policy and its name."""

    name: str
    limits: list[Limit]
    match: list[str]
    shadow: bool


class PolicyList(msgspec.Struct):
    items: list[PolicyView]


class LimitBody(msgspec.Struct, forbid_unknown_fields=True):
    """A key's own limits: one limit (``requests``, ``window_ms``, ``algorithm``, ``burst``,
    as always), or several (``limits``, with ``shadow``)."""

    requests: Requests | msgspec.UnsetType = msgspec.UNSET
    window_ms: WindowMs | msgspec.UnsetType = msgspec.UNSET
    algorithm: Algorithm | msgspec.UnsetType = msgspec.UNSET
    burst: Burst | msgspec.UnsetType | None = msgspec.UNSET
    calendar: Calendar | msgspec.UnsetType = msgspec.UNSET
    limits: Limits | msgspec.UnsetType = msgspec.UNSET
    shadow: Shadow | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        self.resolve()

    def resolve(self) -> Limit | KeyLimits:
        single = (self.requests, self.window_ms, self.algorithm, self.burst, self.calendar)
        if not isinstance(self.limits, msgspec.UnsetType):
            if any(not isinstance(v, msgspec.UnsetType) for v in single):
                raise ValueError("give one limit (requests, window_ms, ...) or limits, not both")
            return KeyLimits(self.limits, self.shadow is True)
        if not isinstance(self.shadow, msgspec.UnsetType):
            raise ValueError('shadow needs limits: {"limits": [...], "shadow": true}')
        if isinstance(self.requests, msgspec.UnsetType) or isinstance(
            self.window_ms, msgspec.UnsetType
        ):
            raise ValueError("requests and window_ms are required (or limits)")
        algorithm = (
            "token_bucket" if isinstance(self.algorithm, msgspec.UnsetType) else self.algorithm
        )
        burst = None if isinstance(self.burst, msgspec.UnsetType) else self.burst
        return Limit(self.requests, self.window_ms, algorithm, burst, self.calendar)


class AcceptedResponse(msgspec.Struct):
    """The change is on the config stream but no worker applied it in time."""

    status: Literal["accepted"]
    event_id: str


class ErrorResponse(msgspec.Struct):
    error: str
    message: str


class HealthResponse(msgspec.Struct):
    status: Literal["healthy"]
    version: str
    timestamp: str


class ReadyResponse(msgspec.Struct):
    status: Literal["ready", "not_ready"]
    redis: Literal["connected", "disconnected"]


class BatchItem(msgspec.Struct, forbid_unknown_fields=True):
    key: Annotated[
        str,
        msgspec.Meta(pattern=KEY_PATTERN, description="Rate-limit key.", examples=["user-42"]),
    ]
    tokens: Tokens = 1


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Many checks in one request, answered in one Redis round trip."""

    checks: Annotated[list[BatchItem], msgspec.Meta(min_length=1, max_length=1000)]
    all_or_nothing: Annotated[
        bool,
        msgspec.Meta(
            description="Spend from every listed limit only if all allow, atomically (on a "
            "Redis Cluster all keys must share one hash slot)."
        ),
    ] = False


class BatchResult(msgspec.Struct, omit_defaults=True):
    key: str
    allowed: bool
    remaining: int
    limit: int
    reset_after_ms: int
    retry_after_ms: int | None = None
    error: str | None = None
    message: str | None = None
    policy: PolicyField = None
    shadow: ShadowField = None


class BatchResponse(msgspec.Struct):
    allowed: bool  # every item allowed
    results: list[BatchResult]


class TicketResponse(msgspec.Struct):
    """A notification ticket: pass it as ``?ticket=`` within ``expires_in_ms``."""

    ticket: str
    expires_in_ms: int
