"""The writer of limits: every create, replace and delete goes through :meth:`apply`.

The one other write is a check that carries an inline limit for a key that has none
(``decide.lua``): it stores that limit at no stream version, so any published change
supersedes it; it is not audited or announced (docs/streams.md).

Apply is one script call, idempotent and ordered by a version (the config stream entry id):
a change older than what the key holds is skipped as ``stale``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from core.redis_client import unavailable
from core.scripts import APPLY
from schemas.limits import Limit

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.keys import KeySpace

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

    __slots__ = ("_keys", "_redis", "_tombstone_ms")

    def __init__(self, redis: Redis, keys: KeySpace, tombstone_ttl_ms: int) -> None:
        self._redis = redis
        self._keys = keys
        self._tombstone_ms = tombstone_ttl_ms

    def _script_args(
        self, key: str, limit: Limit | None, version: str, now_us: int | None = None
    ) -> tuple[list[str], list[str | int]]:
        if limit is None:
            args: list[str | int] = ["del", version, "", "", "", ""]
        else:
            burst = limit.burst if limit.burst is not None else ""
            args = ["set", version, limit.algorithm, limit.requests, limit.window_ms, burst]
        args += [self._tombstone_ms, "" if now_us is None else now_us]
        return [self._keys.config(key), self._keys.state(key)], args

    async def apply(
        self, key: str, limit: Limit | None, version: str = "", *, now_us: int | None = None
    ) -> ApplyResult:
        """Set ``key``'s limit, or delete it when ``limit`` is None, at ``version``.

        ``now_us`` overrides the server clock (only tests pass it).
        """
        keys, args = self._script_args(key, limit, version, now_us)
        reply = await unavailable(lambda: APPLY(self._redis, keys, args), "apply")
        return _result(reply)

    async def apply_many(
        self, changes: list[tuple[str, Limit | None, str]]
    ) -> list[ApplyResult | Exception]:
        """Apply ``(key, limit or None, version)`` changes in order, in one round trip.

        Each change succeeds or fails on its own; a failure is returned, not raised.
        """
        calls = [self._script_args(key, limit, version) for key, limit, version in changes]
        replies = await unavailable(lambda: APPLY.run_many(self._redis, calls), "apply")
        return [r if isinstance(r, Exception) else _result(r) for r in replies]

    async def get(self, key: str) -> Limit | None:
        """The stored limit of ``key``, or None."""
        cfg = self._keys.config(key)
        raw = await unavailable(
            lambda: self._redis.hmget(cfg, ["alg", "req", "win", "burst", "del"]), "get"
        )
        alg, req, win, burst, deleted = (_text(v) for v in raw)
        if not alg or deleted == "1":
            return None
        return Limit(
            requests=int(req),
            window_ms=int(win),
            algorithm=alg,  # type: ignore[arg-type]
            burst=int(burst) if burst else None,
        )

    async def version(self, key: str) -> str:
        """The stream entry id of the last change applied to ``key`` ("" if none)."""
        cfg = self._keys.config(key)
        raw = await unavailable(lambda: self._redis.hget(cfg, "ver"), "version")
        return _text(raw)


def _result(reply: list[bytes]) -> ApplyResult:
    outcome, alg, req, win, burst, ver = (_text(v) for v in reply)
    before = None
    if alg:
        before = Limit(
            requests=int(req),
            window_ms=int(win),
            algorithm=alg,  # type: ignore[arg-type]
            burst=int(burst) if burst else None,
        )
    return ApplyResult(outcome, before, ver)  # type: ignore[arg-type]


def _text(value: bytes | str | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)
