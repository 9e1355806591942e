"""Typed results: what the service answers, as frozen dataclasses (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "Algorithm",
    "CheckManyResult",
    "Decision",
    "Lease",
    "Limit",
    "LimitChange",
    "Policy",
    "PolicyChange",
    "forwarded_headers",
]

Algorithm = Literal["token_bucket", "sliding_window", "fixed_window", "gcra", "concurrency"]
ChangeStatus = Literal["created", "replaced", "deleted", "accepted"]


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The rate-limit headers of an answer, lower-cased: ``X-RateLimit-*``, the IETF
    ``RateLimit`` and ``RateLimit-Policy`` fields and ``Retry-After`` — what a service
    protected by Throttler passes on to its own callers."""
    return {
        name.lower(): value
        for name, value in headers.items()
        if name.lower().startswith(("x-ratelimit-", "ratelimit")) or name.lower() == "retry-after"
    }


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one check.

    ``retry_after_ms`` is the wait until the same check could succeed (0 when allowed).
    ``enforced`` is false when nothing was decided (the service or its Redis could not be
    asked and a failure policy let the request through). ``cached`` is true when the local
    denial cache answered without asking the service. ``headers`` are the rate-limit
    headers to forward (lower-case names). ``error``/``message`` are set only on an item of
    :meth:`check_many` that the service refused (e.g. tokens above the capacity).
    ``wait_ms`` is set on a check that asked for ``max_wait_ms`` and was allowed by a
    reservation: the tokens are spent, start after that many ms (the client has already
    slept it when it answers).
    """

    key: str
    allowed: bool
    remaining: int
    limit: int
    reset_after_ms: int
    retry_after_ms: int = 0
    enforced: bool = True
    cached: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    message: str | None = None
    wait_ms: int = 0

    @classmethod
    def unenforced(cls, key: str) -> Decision:
        """Allowed without a decision: what ``failure_policy="open"`` answers."""
        return cls(key, True, 0, 0, 0, enforced=False, headers={"x-ratelimit-enforced": "false"})


@dataclass(frozen=True, slots=True)
class Lease:
    """The answer to an acquire: a lease of the key's concurrency limit, or a denial.

    ``allowed``: a lease was taken; ``id`` names it (empty when denied, and when nothing
    was enforced). It ends after ``expires_in_ms`` unless released first. Denied,
    ``retry_after_ms`` is the wait until a lease ends. ``remaining``/``limit`` are those of
    the key's limit with the least left (usually the free slots and the slots).
    """

    key: str
    allowed: bool
    id: str
    expires_in_ms: int
    remaining: int
    limit: int
    retry_after_ms: int = 0
    enforced: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def unenforced(cls, key: str) -> Lease:
        """Allowed without a lease: what ``failure_policy="open"`` answers."""
        return cls(key, True, "", 0, 0, 0, enforced=False)


@dataclass(frozen=True, slots=True)
class CheckManyResult:
    """The answer to :meth:`check_many`: one decision per item, in order; ``allowed`` is
    true when every item is."""

    allowed: bool
    results: tuple[Decision, ...]
    enforced: bool = True


@dataclass(frozen=True, slots=True)
class Limit:
    """``requests`` per ``window_ms`` under ``algorithm``; ``burst`` (token bucket and GCRA
    only) is the most spendable at once, ``requests`` when left out."""

    requests: int
    window_ms: int
    algorithm: Algorithm = "token_bucket"
    burst: int | None = None
    #: ``"month"``: a ``fixed_window`` whose windows are UTC calendar months (``window_ms``
    #: is then 2678400000, the longest month).
    calendar: Literal["month"] | None = None

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "requests": self.requests,
            "window_ms": self.window_ms,
            "algorithm": self.algorithm,
        }
        if self.burst is not None:
            body["burst"] = self.burst
        if self.calendar is not None:
            body["calendar"] = self.calendar
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> Limit:
        algorithm = body.get("algorithm", "token_bucket")
        if algorithm not in get_args(Algorithm):
            raise ValueError(f"unknown algorithm {algorithm!r}")
        burst = body.get("burst")
        return cls(
            requests=as_int(body, "requests"),
            window_ms=as_int(body, "window_ms"),
            algorithm=algorithm,  # type: ignore[arg-type]  # checked against Algorithm above
            burst=None if burst is None else as_int(body, "burst"),
            calendar="month" if body.get("calendar") == "month" else None,
        )


@dataclass(frozen=True, slots=True)
class LimitChange:
    """The outcome of :meth:`set_limit` or :meth:`delete_limit`.

    ``created``/``replaced``: ``limit`` is the limit as stored. ``deleted``: ``limit`` is
    the removed one. ``accepted``: no worker applied the change within the service's
    ``APPLY_WAIT_MS``; it stays on the config stream as ``event_id`` and applies later.
    """

    status: ChangeStatus
    limit: Limit | None = None
    event_id: str | None = None
    #: Every limit of the key (``limit`` is the first); ``shadow`` as stored.
    limits: tuple[Limit, ...] = ()
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    """Limits for every key that a pattern of ``match`` selects: exact keys, prefixes ending
    in ``*``, or ``*`` alone (every key without a better match). ``shadow``: evaluated and
    spent as usual, but every check is allowed (a would-be denial is reported)."""

    name: str
    limits: tuple[Limit, ...]
    match: tuple[str, ...] = ()
    shadow: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "limits": [limit.to_json() for limit in self.limits],
            "match": list(self.match),
            "shadow": self.shadow,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> Policy:
        limits, match = body.get("limits"), body.get("match", [])
        if not isinstance(limits, list) or not isinstance(match, list):
            raise ValueError(f"expected limits and match lists, got {limits!r}, {match!r}")
        return cls(
            name=str(body["name"]),
            limits=tuple(Limit.from_json(limit) for limit in limits),
            match=tuple(str(pattern) for pattern in match),
            shadow=body.get("shadow") is True,
        )


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """The outcome of :meth:`put_policy` or :meth:`delete_policy`: ``created``, ``replaced``
    or ``deleted`` with the policy (as stored, or as it was), or ``accepted`` with the
    ``event_id`` of a change that no worker applied within ``APPLY_WAIT_MS``."""

    status: ChangeStatus
    policy: Policy | None = None
    event_id: str | None = None


def as_int(body: Mapping[str, object], name: str) -> int:
    """``body[name]`` as an int; a clear ``ValueError`` when the service sent anything else."""
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    return value
