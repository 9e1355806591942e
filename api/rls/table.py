"""Which rate limit a descriptor falls under: envoyproxy/ratelimit's lookup, without I/O.

A request descriptor's entries walk the domain's tree one level per entry: at each level an
exact ``key``+``value`` node first, else the first wildcard node (``value: "abc*"``) whose
prefix the value has, else the key-only node. The descriptor is limited by the node its
*last* entry lands on, when that node has a ``rate_limit`` (a request with more entries
than the config goes deep is not limited, as in the reference server). Counters are per
domain + the request's full descriptor, so a key-only node counts every value apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.scripts import limit_args
from schemas.limits import Limit

if TYPE_CHECKING:
    from collections.abc import Sequence

    from schemas.rls import RlsDescriptor, RlsDomain

__all__ = ["UNIT_NUMBER", "Rule", "RuleTable"]

#: Envoy's RateLimitResponse.RateLimit.Unit numbers
UNIT_NUMBER = {"second": 1, "minute": 2, "hour": 3, "day": 4, "month": 5, "week": 7}


@dataclass(frozen=True, slots=True)
class Rule:
    """A rate limit as the service applies it. ``limit`` is None when nothing is counted:
    ``unlimited``, or ``requests_per_unit: 0`` (``blocked``: every request is over)."""

    requests_per_unit: int
    unit: int  # Envoy's Unit number (0 when the limit has only window_ms)
    name: str
    limit: Limit | None
    args: list[int]  # the limit as the check scripts take it
    unlimited: bool = False
    shadow: bool = False
    replaces: tuple[str, ...] = ()
    detailed: bool = False
    path: str = ""  # the node, for metrics: <key>[_<value>].<key>...

    @property
    def blocked(self) -> bool:
        return self.limit is None and not self.unlimited

    @property
    def window_ms(self) -> int:
        return self.limit.window_ms if self.limit is not None else 0


def make_rule(
    requests: int,
    unit: str | None,
    window_ms: int,
    *,
    name: str = "",
    unlimited: bool = False,
    shadow: bool = False,
    replaces: tuple[str, ...] = (),
    detailed: bool = False,
    path: str = "",
    algorithm: str = "fixed_window",
    burst: int | None = None,
) -> Rule:
    limit = None
    if not unlimited and requests > 0:
        limit = Limit(requests=requests, window_ms=window_ms, algorithm=algorithm, burst=burst)  # type: ignore[arg-type]
    return Rule(
        requests,
        UNIT_NUMBER.get(unit or "", 0),
        name,
        limit,
        limit_args((limit,)) if limit is not None else [],
        unlimited,
        shadow,
        replaces,
        detailed,
        path,
    )


@dataclass(slots=True)
class _Node:
    rule: Rule | None = None
    exact: dict[tuple[str, str], _Node] = field(default_factory=dict)
    wildcards: list[tuple[str, str, _Node]] = field(default_factory=list)  # key, prefix, node

    @property
    def leaf(self) -> bool:
        return not self.exact and not self.wildcards


def _build(nodes: Sequence[RlsDescriptor], parent: str) -> _Node:
    level = _Node()
    for d in nodes:
        path = f"{parent}.{d.key}" if parent else d.key
        if d.value:
            path += f"_{d.value}"
        node = _build(d.descriptors, path)
        r = d.rate_limit
        if r is not None:
            node.rule = make_rule(
                r.requests_per_unit,
                r.unit,
                r.window,
                name=r.name,
                unlimited=r.unlimited,
                shadow=d.shadow_mode,
                replaces=tuple(x.name for x in r.replaces),
                detailed=d.detailed_metric,
                path=path,
                algorithm=r.algorithm,
                burst=r.burst,
            )
        if d.value.endswith("*"):
            level.wildcards.append((d.key, d.value[:-1], node))
        else:
            level.exact[d.key, d.value] = node
    return level


class RuleTable:
    """Every loaded domain's tree; rebuilt when the domains change (``version``)."""

    def __init__(self) -> None:
        self.version = -2
        self._domains: dict[str, _Node] = {}

    def load(self, domains: dict[str, RlsDomain], version: int) -> None:
        self._domains = {name: _build(d.descriptors, "") for name, d in domains.items()}
        self.version = version

    def known(self, domain: str) -> bool:
        return domain in self._domains

    def lookup(self, domain: str, entries: Sequence[tuple[str, str]]) -> Rule | None:
        """The rule of a request descriptor of ``domain``, or None (not limited)."""
        level = self._domains.get(domain)
        if level is None:
            return None
        rule = None
        last = len(entries) - 1
        for i, (key, value) in enumerate(entries):
            node = level.exact.get((key, value))
            if node is None:
                node = next(
                    (n for k, p, n in level.wildcards if k == key and value.startswith(p)), None
                )
            if node is None:
                node = level.exact.get((key, ""))
            if node is None:
                return None
            if i == last:
                rule = node.rule
            elif node.leaf:
                return None
            level = node
        return rule
