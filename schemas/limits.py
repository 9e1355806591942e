"""Limits and policies: the rules rate-limit keys are held to."""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "ALGORITHMS",
    "CONCURRENCY",
    "KEY_PATTERN",
    "MAX_KEY_BYTES",
    "MAX_LEASES",
    "MAX_LIMITS",
    "MAX_REQUESTS",
    "MAX_SLIDING_REQUESTS",
    "MAX_WINDOW_MS",
    "PATTERN_PATTERN",
    "POLICY_NAME_PATTERN",
    "Algorithm",
    "Calendar",
    "KeyLimits",
    "Limit",
    "Limits",
    "Policy",
]

#: A rate-limit key: any text without whitespace, control characters, ``/`` (paths), ``{``
#: and ``}`` (so a key cannot break out of its Redis Cluster hash tag), ``*`` (patterns) or
#: U+FFFD (what a server makes of bytes that are not UTF-8, which must not merge into one key),
#: at most :data:`MAX_KEY_BYTES` bytes of UTF-8 (``core.keys.validate_key`` counts bytes).
#: ``$(?!\n)``: Python's ``$`` also matches before a final newline; this form ends the key
#: at the true end in Python (msgspec) and in JSON Schema (ECMA) alike.
_KEY_CHAR = r"[^\s\x00-\x1f\x7f-\x9f/{}*\ufffd]"
KEY_PATTERN: Final = rf"^{_KEY_CHAR}{{1,256}}$(?!\n)"
MAX_KEY_BYTES: Final = 256
#: A policy's ``match`` entry: an exact key, a prefix ending in ``*``, or ``*`` alone.
PATTERN_PATTERN: Final = rf"^(\*|{_KEY_CHAR}{{1,256}}\*?)$(?!\n)"
POLICY_NAME_PATTERN: Final = r"^[A-Za-z0-9_\-.:]{1,64}$(?!\n)"
MAX_LIMITS: Final = 8  #: limits one key or policy may hold
MAX_REQUESTS: Final = 1_000_000_000
MAX_WINDOW_MS: Final = 2_678_400_000  # 31 days
MAX_SLIDING_REQUESTS: Final = 100_000  # the exact log stores one entry per request
MAX_LEASES: Final = 100_000  # a concurrency limit stores one entry per lease held
#: GCRA's tolerance (interval × burst) in µs: below 2**53, where doubles (Lua) stay exact.
MAX_GCRA_TOLERANCE_US: Final = 10**15

Algorithm = Literal["token_bucket", "sliding_window", "fixed_window", "gcra", "concurrency"]
#: The rate algorithms: what checks spend from (and refunds give back to).
ALGORITHMS: Final[tuple[Algorithm, ...]] = (
    "token_bucket",
    "sliding_window",
    "fixed_window",
    "gcra",
)
#: Leases held at once (``POST /rate-limit/{key}/acquire`` and ``/release``).
CONCURRENCY: Final = "concurrency"

Requests = Annotated[
    int,
    msgspec.Meta(
        ge=1, le=MAX_REQUESTS, description="Requests (tokens) allowed per window.", examples=[100]
    ),
]
WindowMs = Annotated[
    int,
    msgspec.Meta(
        ge=1, le=MAX_WINDOW_MS, description="Window length in milliseconds.", examples=[60000]
    ),
]
Burst = Annotated[
    int,
    msgspec.Meta(
        ge=1,
        le=MAX_REQUESTS,
        description="token_bucket and gcra only: the most spendable at once (default requests).",
    ),
]

Calendar = Annotated[
    Literal["month"],
    msgspec.Meta(
        description="fixed_window only: windows are UTC calendar months (a quota that resets "
        f"at 00:00 UTC on the 1st); window_ms must then be {MAX_WINDOW_MS} (31 days, the "
        "longest month)."
    ),
]


class Limit(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    """``requests`` per ``window_ms`` under ``algorithm``; ``burst`` for buckets and GCRA;
    ``calendar: "month"`` for a fixed window that is a UTC calendar month.

    A ``concurrency`` limit is ``requests`` leases held at once, each living ``window_ms``
    unless released first."""

    requests: Requests
    window_ms: WindowMs
    algorithm: Algorithm = "token_bucket"
    burst: Burst | None = None
    calendar: Calendar | msgspec.UnsetType = msgspec.UNSET  # never encoded when unset

    def __post_init__(self) -> None:
        if self.calendar is not msgspec.UNSET:
            if self.algorithm != "fixed_window":
                raise ValueError(f"calendar applies to fixed_window, not {self.algorithm}")
            if self.window_ms != MAX_WINDOW_MS:
                raise ValueError(
                    f"a calendar month window is given as window_ms {MAX_WINDOW_MS} "
                    f"(31 days, the longest month), not {self.window_ms}"
                )
        if self.algorithm in ("sliding_window", "fixed_window", CONCURRENCY):
            if self.burst is not None:
                raise ValueError(f"burst applies to token_bucket and gcra, not {self.algorithm}")
            if self.algorithm == "sliding_window" and self.requests > MAX_SLIDING_REQUESTS:
                raise ValueError(
                    f"requests must be at most {MAX_SLIDING_REQUESTS} for sliding_window "
                    "(the exact log stores one entry per request); use gcra or token_bucket "
                    "for larger limits"
                )
            if self.algorithm == CONCURRENCY and self.requests > MAX_LEASES:
                raise ValueError(
                    f"requests must be at most {MAX_LEASES} for concurrency "
                    "(every lease held is stored)"
                )
        else:
            if self.burst is None:
                self.burst = self.requests
            if self.algorithm == "gcra":
                interval = -(-self.window_ms * 1000 // self.requests)  # whole microseconds
                if interval * self.burst > MAX_GCRA_TOLERANCE_US:
                    raise ValueError(
                        "gcra: burst × window / requests must be at most about 31 years "
                        f"({MAX_GCRA_TOLERANCE_US} µs) so its arithmetic stays exact; "
                        "lower burst or window_ms"
                    )

    @property
    def capacity(self) -> int:
        """The most one check can ever spend: burst for buckets and GCRA, else requests."""
        return self.burst if self.burst is not None else self.requests


Limits = Annotated[
    list[Limit],
    msgspec.Meta(
        min_length=1,
        max_length=MAX_LIMITS,
        description=f"1 to {MAX_LIMITS} limits: a check must satisfy every one of them.",
    ),
]
Shadow = Annotated[
    bool,
    msgspec.Meta(
        description="Evaluate and spend as usual, but allow every check: a would-be denial "
        'is reported (`"shadow": "denied"`, `X-RateLimit-Shadow`) and counted.'
    ),
]
Pattern = Annotated[
    str,
    msgspec.Meta(
        pattern=PATTERN_PATTERN,
        description="An exact key, a prefix ending in `*` (`free:*`), or `*` alone (every "
        "key without a better match: replaces the built-in default).",
        examples=["free:*"],
    ),
]


class KeyLimits(msgspec.Struct, forbid_unknown_fields=True):
    """A key's own limits when it has several (or a shadow flag)."""

    limits: Limits
    shadow: Shadow = False


class Policy(msgspec.Struct, forbid_unknown_fields=True):
    """Limits for every key that a pattern of ``match`` selects."""

    limits: Limits
    match: Annotated[
        list[Pattern], msgspec.Meta(max_length=1000, description="Keys and prefixes it covers.")
    ] = msgspec.field(default_factory=list)
    shadow: Shadow = False

    def __post_init__(self) -> None:
        if len(set(self.match)) != len(self.match):
            raise ValueError("match lists a pattern twice")
        for pattern in self.match:
            if len(pattern.encode()) > MAX_KEY_BYTES + 1:
                raise ValueError(f"match: {pattern!r} is longer than {MAX_KEY_BYTES} bytes")
