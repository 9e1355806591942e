"""Policies: which limits a key is checked under when it has none of its own.

Resolution for a key: its own limits (decided inside the check script) > a policy matching
the key exactly > the policy with the longest matching prefix (``free:*``) > the policy
matching ``*`` > the built-in default (``DEFAULT_CAPACITY``, ``DEFAULT_REFILL_RATE``).

:class:`PolicyTable` is that resolution, in process and without I/O; :class:`PolicySync`
keeps it equal to the policies in Redis: it loads them at start, again when a
``policy_changed`` notification arrives, and — so that a lost notification cannot leave a
process stale for more than about a second — whenever the version counter the apply script
increments differs from the one it loaded (one GET a second).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from core.documents import DocumentSync
from core.scripts import limit_args
from schemas.limits import Policy

if TYPE_CHECKING:
    from core.gateway import Gateway
    from core.keys import KeySpace
    from schemas.limits import Limit

__all__ = ["PolicySync", "PolicyTable", "Resolved", "decode_policy"]

_log = logging.getLogger("throttler.policies")
_CACHE = 100_000  # keys whose resolution is remembered (the table is cleared on a change)


@dataclass(frozen=True, slots=True)
class Resolved:
    """The limits a key without limits of its own is checked under."""

    name: str | None  # the policy; None for the built-in default
    limits: tuple[Limit, ...]
    shadow: bool
    args: list[int]  # the limits as the check scripts take them, built once

    @classmethod
    def of(cls, name: str | None, limits: tuple[Limit, ...], shadow: bool = False) -> Resolved:
        return cls(name, limits, shadow, limit_args(limits))


class PolicyTable:
    """Key → limits, for keys without limits of their own. No I/O."""

    def __init__(self, default: Resolved) -> None:
        self.default = default
        self.policies: dict[str, Policy] = {}
        self.version = -1  # nothing loaded yet
        self._exact: dict[str, Resolved] = {}
        self._prefixes: list[tuple[str, Resolved]] = []
        self._star: Resolved | None = None
        self._cache: dict[str, Resolved] = {}

    def load(self, policies: dict[str, Policy], version: int) -> None:
        exact: dict[str, Resolved] = {}
        prefixes: list[tuple[str, Resolved]] = []
        star = None
        for name, policy in policies.items():
            resolved = Resolved.of(name, tuple(policy.limits), policy.shadow)
            for pattern in policy.match:
                if pattern == "*":
                    star = resolved
                elif pattern.endswith("*"):
                    prefixes.append((pattern[:-1], resolved))
                else:
                    exact[pattern] = resolved
        prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        self.policies, self.version = policies, version
        self._exact, self._prefixes, self._star = exact, prefixes, star
        self._cache = {}

    def resolve(self, key: str) -> Resolved:
        found = self._cache.get(key)
        if found is not None:
            return found
        found = self._exact.get(key)
        if found is None:
            found = next((r for p, r in self._prefixes if key.startswith(p)), None)
        if found is None:
            found = self._star or self.default
        if len(self._cache) >= _CACHE:
            self._cache.clear()
        self._cache[key] = found
        return found


def decode_policy(raw: bytes | str) -> Policy:
    """A policy as the apply script stores it (Lua's cjson writes an empty list as ``{}``)."""
    data: dict[str, Any] = msgspec.json.decode(raw)
    data.pop("v", None)
    if data.get("match") == {}:
        data["match"] = []
    return msgspec.convert(data, Policy)


class PolicySync(DocumentSync[Policy]):
    """Keeps a :class:`PolicyTable` equal to the policies in Redis."""

    def __init__(
        self, gateway: Gateway, keys: KeySpace, table: PolicyTable, interval_s: float = 1.0
    ) -> None:
        super().__init__(
            gateway,
            keys.policies,
            keys.policy_version,
            decode_policy,
            what="policy",
            log=_log,
            op="policy_version",
            interval_s=interval_s,
        )
        self.table = table

    def loaded(self, documents: dict[str, Policy], version: int) -> None:
        super().loaded(documents, version)
        self.table.load(documents, version)
