"""Envoy rate limit service domains: envoyproxy/ratelimit's YAML configuration, as Structs.

A domain is a tree of descriptors (``key``, optional ``value``: exact, or a prefix ending in
``*``) whose nodes may carry a ``rate_limit``. The fields are the reference server's; ours
(``algorithm``, ``window_ms``, ``burst``) are optional and default to its semantics: a fixed
window of one ``unit``, aligned to the unit since the Unix epoch. Validated on decoding,
so a bad domain is refused by ``throttler apply`` and dead-lettered by a worker alike.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from schemas.limits import MAX_REQUESTS, Algorithm, Burst, Limit, WindowMs

__all__ = [
    "MAX_DESCRIPTOR_DEPTH",
    "MAX_NODES",
    "UNIT_MS",
    "DomainName",
    "RlsDescriptor",
    "RlsDomain",
    "RlsRateLimit",
    "RlsReplaces",
    "Unit",
]

Unit = Literal["second", "minute", "hour", "day", "week", "month"]
#: A unit's window. ``month`` is 30 days, as in the reference server; ``year`` is refused:
#: the longest window is 31 days (MAX_WINDOW_MS).
UNIT_MS: Final[dict[str, int]] = {
    "second": 1000,
    "minute": 60_000,
    "hour": 3_600_000,
    "day": 86_400_000,
    "week": 7 * 86_400_000,
    "month": 30 * 86_400_000,
}
MAX_DESCRIPTOR_DEPTH: Final = 16  #: nesting of ``descriptors`` in one domain
MAX_NODES: Final = 10_000  #: descriptor nodes in one domain

DomainName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=256,
        pattern=r"^[^\s\x00-\x1f\x7f/]+$(?!\n)",
        description="The domain Envoy names in its requests (no whitespace or /).",
        examples=["edge_proxy"],
    ),
]
Text = Annotated[str, msgspec.Meta(max_length=1024)]


class RlsReplaces(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class RlsRateLimit(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A node's limit: ``requests_per_unit`` per ``unit`` (or ``unlimited``)."""

    requests_per_unit: Annotated[int, msgspec.Meta(ge=0, le=MAX_REQUESTS)] = 0
    unit: Unit | None = None
    unlimited: bool = False
    name: Annotated[str, msgspec.Meta(max_length=256)] = ""
    replaces: list[RlsReplaces] = msgspec.field(default_factory=list)
    # Throttler's extensions (the reference server has none of these):
    algorithm: Algorithm = "fixed_window"
    window_ms: WindowMs | None = None  # any window (overrides the unit's)
    burst: Burst | None = None

    def __post_init__(self) -> None:
        if self.algorithm == "concurrency":
            raise ValueError(
                "rate_limit: algorithm concurrency limits leases (POST /rate-limit/{key}/"
                "acquire), which Envoy's protocol has no call for"
            )
        if self.unlimited:
            if self.unit is not None or self.window_ms is not None:
                raise ValueError("rate_limit: unlimited takes no unit or window_ms")
        elif self.unit is None and self.window_ms is None:
            raise ValueError(
                "rate_limit: unit is required (second, minute, hour, day, week or month), "
                "or window_ms"
            )
        for replaced in self.replaces:
            if replaced.name == self.name:
                raise ValueError(f"rate_limit: replaces names its own limit {self.name!r}")
        if self.requests_per_unit > 0 and not self.unlimited:
            self.limit()  # Limit's own rules (e.g. sliding_window's request cap)

    @property
    def window(self) -> int:
        """The window in ms (0 when unlimited)."""
        if self.window_ms is not None:
            return self.window_ms
        return UNIT_MS[self.unit] if self.unit is not None else 0

    def limit(self) -> Limit:
        """The Throttler limit this rate limit is checked under (requests_per_unit ≥ 1)."""
        return Limit(
            requests=self.requests_per_unit,
            window_ms=self.window,
            algorithm=self.algorithm,
            burst=self.burst,
        )


class RlsDescriptor(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A node of a domain's tree."""

    key: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    value: Text = ""  # "" matches any value (one counter per value); "abc*" by prefix
    rate_limit: RlsRateLimit | None = None
    descriptors: list[RlsDescriptor] = msgspec.field(default_factory=list)
    shadow_mode: bool = False
    detailed_metric: bool = False


class RlsDomain(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One domain: what ``throttler apply`` publishes and workers store."""

    domain: DomainName
    descriptors: list[RlsDescriptor] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        _check_level(self.descriptors, self.domain, 1, [0])


def _check_level(nodes: list[RlsDescriptor], path: str, depth: int, count: list[int]) -> None:
    if depth > MAX_DESCRIPTOR_DEPTH:
        raise ValueError(f"{path}: descriptors nest deeper than {MAX_DESCRIPTOR_DEPTH} levels")
    seen: set[tuple[str, str]] = set()
    for node in nodes:
        count[0] += 1
        if count[0] > MAX_NODES:
            raise ValueError(f"more than {MAX_NODES} descriptors in one domain")
        here = f"{path}.{node.key}" + (f"_{node.value}" if node.value else "")
        if (node.key, node.value) in seen:
            raise ValueError(f"duplicate descriptor {here!r}")
        seen.add((node.key, node.value))
        _check_level(node.descriptors, here, depth + 1, count)
