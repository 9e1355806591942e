"""The writer of limits: every create, replace and delete goes through :meth:`apply`.

The one other write is a check that carries an inline limit for a key that has none (when
``INLINE_LIMITS`` allows it; ``decide.lua``): stored at no stream version, with a TTL, so any
published change supersedes it; it is not audited or announced (docs/streams.md).

Apply is one script call, idempotent and ordered by a version (the config stream entry id):
a change older than what the key holds is skipped as ``stale``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from core.errors import RedisUnavailableError
from core.gateway import text
from core.scripts import APPLY, decode_limits, encode_limits

if TYPE_CHECKING:
    from core.gateway import Gateway
    from core.keys import KeySpace
    from schemas.limits import Limit

__all__ = ["ApplyResult", "ConfigStore", "Outcome"]

Outcome = Literal["created", "replaced", "deleted", "not_found", "duplicate", "stale"]
APPLIED: frozenset[str] = frozenset({"created", "replaced", "deleted", "not_found"})


@dataclass(frozen=True, slots=True)
class ApplyResult:
    outcome: Outcome
    before: Limit | None
    before_version: str

    @property
    def applied(self) -> bool:
        """True when this call changed (or confirmed) the key; False for duplicate/stale."""
        return self.outcome in APPLIED


class ConfigStore:
    """Reads and writes limits; :meth:`apply` writes every published change."""

    __slots__ = ("_gateway", "_keys", "_tombstone_ms")

    def __init__(self, gateway: Gateway, keys: KeySpace, tombstone_ttl_ms: int) -> None:
        self._gateway = gateway
        self._keys = keys
        self._tombstone_ms = tombstone_ttl_ms

    def script_args(
        self, key: str, limit: Limit | None, version: str, now_us: int | None = None
    ) -> tuple[list[str], list[str | int]]:
        op, limits = ("del", "") if limit is None else ("set", encode_limits((limit,)))
        args: list[str | int] = [op, version, limits, self._tombstone_ms]
        args.append("" if now_us is None else now_us)
        return self._keys.script_keys(key), args

    async def apply(
        self, key: str, limit: Limit | None, version: str = "", *, now_us: int | None = None
    ) -> ApplyResult:
        """Set ``key``'s limit, or delete it when ``limit`` is None, at ``version``.

        ``now_us`` overrides the server clock (only tests pass it).
        """
        keys, args = self.script_args(key, limit, version, now_us)
        return _result(await self._gateway.run(APPLY, keys, args))

    async def apply_many(
        self, changes: list[tuple[str, Limit | None, str]]
    ) -> list[ApplyResult | Exception]:
        """Apply ``(key, limit or None, version)`` changes in order, in one round trip.

        Each change succeeds or fails on its own; a failure is returned, not raised, except
        Redis being unavailable (RedisUnavailableError: nothing can be said of the batch).
        """
        calls = [self.script_args(key, limit, version) for key, limit, version in changes]
        replies = await self._gateway.run_many(APPLY, calls)
        for reply in replies:
            if isinstance(reply, RedisUnavailableError):
                raise reply
        return [r if isinstance(r, Exception) else _result(r) for r in replies]

    async def get(self, key: str) -> Limit | None:
        """The configured limit of ``key``, or None."""
        raw = await self._gateway.call("get", self._gateway.client.hget, self._keys.limit(key), "c")
        own = text(raw)
        return decode_limits(own)[0] if own else None

    async def version(self, key: str) -> str:
        """The stream entry id of the last change applied to ``key`` ("" if none)."""
        raw = await self._gateway.call(
            "version", self._gateway.client.hget, self._keys.limit(key), "v"
        )
        return text(raw)


def _result(reply: list[str]) -> ApplyResult:
    outcome, before, version = reply
    limit = decode_limits(before)[0] if before else None
    return ApplyResult(outcome, limit, version)  # type: ignore[arg-type]
