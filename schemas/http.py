"""HTTP request and response bodies."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.limits import (
    KEY_PATTERN,
    MAX_REQUESTS,
    Algorithm,
    Burst,
    Limit,
    Requests,
    WindowMs,
)

__all__ = [
    "AcceptedResponse",
    "BatchItem",
    "BatchRequest",
    "BatchResponse",
    "BatchResult",
    "CheckAllowed",
    "CheckDenied",
    "CheckRequest",
    "ErrorResponse",
    "HealthResponse",
    "LimitStatus",
    "ReadyResponse",
    "TicketResponse",
]

Tokens = Annotated[
    int,
    msgspec.Meta(
        ge=0,
        le=MAX_REQUESTS,
        description="Tokens to spend (default 1); 0 peeks without consuming.",
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


class CheckAllowed(msgspec.Struct, omit_defaults=True):
    """An allowed check. ``enforced`` is present (false) only when Redis could not be asked
    and ``FAILURE_POLICY=open`` let the request through without a decision."""

    allowed: bool
    remaining: int
    limit: int
    reset_after_ms: int
    enforced: bool = True


class CheckDenied(msgspec.Struct):
    allowed: bool
    remaining: int
    limit: int
    retry_after_ms: int
    reset_after_ms: int
    error: Literal["rate_limit_exceeded"] = "rate_limit_exceeded"
    message: str = "rate limit exceeded"


class LimitStatus(msgspec.Struct):
    """A key's limit and its live state (nothing consumed)."""

    key: str
    requests: int
    window_ms: int
    algorithm: Algorithm
    burst: int | None
    limit: int
    remaining: int
    reset_after_ms: int


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


class BatchResponse(msgspec.Struct):
    allowed: bool  # every item allowed
    results: list[BatchResult]


class TicketResponse(msgspec.Struct):
    """A notification ticket: pass it as ``?ticket=`` within ``expires_in_ms``."""

    ticket: str
    expires_in_ms: int
