"""The writer of configuration: every change to a key's limits or to a policy goes through
:meth:`ConfigStore.apply`, :meth:`ConfigStore.reset` or :meth:`ConfigStore.apply_policy`.

The one other write is a check that carries an inline limit for a key that has none (when
``INLINE_LIMITS`` allows it; ``decide.lua``): stored at no stream version, with a TTL, so any
published change supersedes it; it is not audited or announced (docs/streams.md).

Each apply is one script call, idempotent and ordered by a version (the config stream entry
id): a change older than what the key (policy) holds is skipped as ``stale``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from core.errors import RedisUnavailableError
from core.gateway import text
from core.policies import decode_policy
from core.scripts import APPLY, APPLY_POLICY, decode_limits, encode_limits
from schemas.limits import Limit

if TYPE_CHECKING:
    from collections.abc import Sequence

    from core.gateway import Gateway
    from core.keys import KeySpace
    from schemas.limits import Policy

__all__ = ["ApplyResult", "ConfigStore", "KeyConfig", "Outcome", "PolicyResult"]

Outcome = Literal[
    "created", "replaced", "deleted", "not_found", "reset", "duplicate", "stale", "conflict"
]
APPLIED: frozenset[str] = frozenset({"created", "replaced", "deleted", "not_found", "reset"})
_GLOB = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """A key's own limits."""

    limits: tuple[Limit, ...]
    shadow: bool = False
    inline: bool = False  # created by a check (INLINE_LIMITS), expires when unused

    @property
    def single(self) -> Limit | None:
        """The limit, when the key has exactly one (and no shadow flag)."""
        return self.limits[0] if len(self.limits) == 1 and not self.shadow else None


@dataclass(frozen=True, slots=True)
class ApplyResult:
    outcome: Outcome
    previous: KeyConfig | None
    before_version: str

    @property
    def applied(self) -> bool:
        """True when this call changed (or confirmed) the key; False for duplicate/stale."""
        return self.outcome in APPLIED

    @property
    def before(self) -> Limit | None:
        """The key's limit before, when it had exactly one."""
        return self.previous.single if self.previous else None


@dataclass(frozen=True, slots=True)
class PolicyResult:
    outcome: Outcome
    before: Policy | None
    before_version: str
    conflict: str  # the pattern another policy holds (outcome "conflict")

    @property
    def applied(self) -> bool:
        return self.outcome in APPLIED


def _key_config(encoded: str) -> KeyConfig | None:
    if not encoded:
        return None
    limits, shadow = decode_limits(encoded)
    return KeyConfig(limits, shadow)


class ConfigStore:
    """Reads and writes limits and policies."""

    __slots__ = ("_gateway", "_keys", "_tombstone_ms")

    def __init__(self, gateway: Gateway, keys: KeySpace, tombstone_ttl_ms: int) -> None:
        self._gateway = gateway
        self._keys = keys
        self._tombstone_ms = tombstone_ttl_ms

    def script_args(
        self,
        key: str,
        limits: Limit | Sequence[Limit] | None,
        version: str,
        now_us: int | None = None,
        *,
        shadow: bool = False,
        op: str | None = None,
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of the apply script (core/lua/apply.lua)."""
        if limits is None:
            encoded = ""
            op = op or "del"
        else:
            listed = [limits] if isinstance(limits, Limit) else limits
            encoded = encode_limits(listed, shadow=shadow)
            op = op or "set"
        args: list[str | int] = [op, version, encoded, self._tombstone_ms]
        args.append("" if now_us is None else now_us)
        return self._keys.script_keys(key), args

    async def apply(
        self,
        key: str,
        limits: Limit | Sequence[Limit] | None,
        version: str = "",
        *,
        shadow: bool = False,
        now_us: int | None = None,
    ) -> ApplyResult:
        """Set ``key``'s limits, or delete them when ``limits`` is None, at ``version``.

        ``now_us`` overrides the server clock (only tests pass it).
        """
        keys, args = self.script_args(key, limits, version, now_us, shadow=shadow)
        return _result(await self._gateway.run(APPLY, keys, args))

    async def reset(self, key: str) -> ApplyResult:
        """Clear what ``key`` has spent under every limit; its limits stay."""
        keys, args = self.script_args(key, None, "", op="reset")
        return _result(await self._gateway.run(APPLY, keys, args))

    async def apply_many(
        self, changes: list[tuple[str, Any, str]]
    ) -> list[ApplyResult | Exception]:
        """Apply ``(key, change, version)`` in order, in one round trip; ``change`` is a limit,
        ``(limits, shadow)``, None (delete) or ``"reset"``.

        Each change succeeds or fails on its own; a failure is returned, not raised, except
        Redis being unavailable (RedisUnavailableError: nothing can be said of the batch).
        """
        calls = []
        for key, change, version in changes:
            if change == "reset":
                calls.append(self.script_args(key, None, version, op="reset"))
            elif isinstance(change, tuple):
                limits, shadow = change
                calls.append(self.script_args(key, limits, version, shadow=shadow))
            else:
                calls.append(self.script_args(key, change, version))
        replies = await self._gateway.run_many(APPLY, calls)
        for reply in replies:
            if isinstance(reply, RedisUnavailableError):
                raise reply
        return [r if isinstance(r, Exception) else _result(r) for r in replies]

    async def get(self, key: str) -> Limit | None:
        """The configured limit of ``key`` (its first, when it has several), or None."""
        config = await self.get_config(key)
        return config.limits[0] if config else None

    async def get_config(self, key: str) -> KeyConfig | None:
        """The key's own limits, or None."""
        raw = await self._gateway.call(
            "get", self._gateway.client.hmget, self._keys.limit(key), ["c", "i"]
        )
        config = _key_config(text(raw[0]))
        if config is not None and raw[1] is not None:
            config = KeyConfig(config.limits, config.shadow, inline=True)
        return config

    async def version(self, key: str) -> str:
        """The stream entry id of the last change applied to ``key`` ("" if none)."""
        raw = await self._gateway.call(
            "version", self._gateway.client.hget, self._keys.limit(key), "v"
        )
        return text(raw)

    async def list_keys(
        self, prefix: str, count: int, cursor: str
    ) -> tuple[list[tuple[str, KeyConfig]], str]:
        """Keys starting with ``prefix`` that have limits of their own — about ``count``,
        from ``cursor`` ("" to start) — and the next cursor ("" at the end).

        A SCAN over the keys' hashes, on every master of a cluster one after the other: the
        cursor is ``<node>:<scan cursor>``.
        """
        nodes = self._gateway.primaries()
        node, _, position = (cursor or "0:0").partition(":")
        index, scan = int(node), int(position or 0)
        head = self._keys.limit("")[:-1]  # "<prefix>:{"
        pattern = _GLOB.sub(r"\\\1", head + prefix) + "*}"
        found: list[tuple[str, KeyConfig]] = []
        while index < len(nodes) and len(found) < count:
            scan, names = await self._gateway.scan(nodes[index], scan, pattern, count)
            rows = await self._gateway.call("list", self._configs, names)
            for name, (encoded, inline) in zip(names, rows, strict=True):
                config = _key_config(text(encoded))
                if config is not None:
                    own = KeyConfig(config.limits, config.shadow, inline is not None)
                    found.append((name[len(head) : -1], own))
            if scan == 0:
                index, scan = index + 1, 0
        return found, ("" if index >= len(nodes) else f"{index}:{scan}")

    async def _configs(self, names: list[str]) -> list[Any]:
        if not names:
            return []
        if self._gateway.cluster:
            return list(
                await asyncio.gather(*(self._gateway.client.hmget(n, ["c", "i"]) for n in names))
            )
        pipe = self._gateway.client.pipeline(transaction=False)
        for name in names:
            pipe.hmget(name, ["c", "i"])
        return list(await pipe.execute())

    # -- policies -------------------------------------------------------------------

    async def apply_policy(
        self, name: str, policy: Policy | None, version: str = ""
    ) -> PolicyResult:
        """Create or replace policy ``name``, or delete it when ``policy`` is None."""
        keys = [
            self._keys.policies,
            self._keys.policy_patterns,
            self._keys.policy_gone,
            self._keys.policy_version,
        ]
        if policy is None:
            args = ["del", name, version, ""]
        else:
            args = ["set", name, version, msgspec.json.encode(policy).decode()]
        outcome, before, version, conflict = await self._gateway.run(APPLY_POLICY, keys, args)
        policy_before = decode_policy(before) if before else None
        return PolicyResult(outcome, policy_before, version, conflict)


def _result(reply: list[str]) -> ApplyResult:
    outcome, before, version = reply
    return ApplyResult(outcome, _key_config(before), version)  # type: ignore[arg-type]
