"""The check path: one script call decides, spends and reports."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from redis.crc import key_slot

from core.errors import LimitValidationError, NotFoundError, RedisUnavailableError
from core.pipelining import AutoPipeline
from core.redis_client import UNAVAILABLE_ERRORS, is_cluster, unavailable
from core.scripts import CHECK, CHECK_ALL
from schemas.limits import ALGORITHMS, Algorithm, Limit

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from redis.asyncio import Redis

    from core.breaker import CircuitBreaker
    from core.keys import KeySpace
    from core.metrics import Metrics

__all__ = ["CheckResult", "Limiter"]

Mode = Literal["d", "i", "p"]
_ALG_INDEX = {name: i + 1 for i, name in enumerate(ALGORITHMS)}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A decision and the limit it was made under. Times in ms, ``now_ms`` is Redis time."""

    allowed: bool
    limit: int
    remaining: int
    reset_after_ms: int
    retry_after_ms: int
    now_ms: int
    algorithm: Algorithm
    requests: int
    window_ms: int
    burst: int

    @classmethod
    def from_reply(cls, reply: list[int]) -> CheckResult:
        code, limit, remaining, reset, retry, now, alg, req, win, burst = (int(v) for v in reply)
        return cls(
            code == 1, limit, remaining, reset, retry, now, ALGORITHMS[alg - 1], req, win, burst
        )


class Limiter:
    """Checks against the limits stored in Redis, falling back to a default limit."""

    __slots__ = ("_breaker", "_default_args", "_keys", "_metrics", "_pipeline", "_redis")

    def __init__(
        self,
        redis: Redis,
        keys: KeySpace,
        default: Limit,
        metrics: Metrics | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._default_args = self._limit_args(default)
        self._metrics = metrics
        self._breaker = breaker
        self._pipeline = AutoPipeline(redis, CHECK)

    @property
    def round_trips(self) -> int:
        """Pipelined round trips made so far (fewer than checks under concurrency)."""
        return self._pipeline.round_trips

    async def _run(self, keys: list[str], args: list[int | str], what: str) -> list[int]:
        reply: list[int] = await self._guarded(partial(self._pipeline.call, keys, args), what)
        return reply

    async def _guarded(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        """Through the breaker (when set), with Redis errors wrapped and measured."""
        wrapped = partial(unavailable, call, what, self._metrics)
        return await (wrapped() if self._breaker is None else self._breaker.call(wrapped))

    @staticmethod
    def _limit_args(limit: Limit) -> list[int]:
        return [_ALG_INDEX[limit.algorithm], limit.requests, limit.window_ms, limit.burst or 0]

    def script_args(
        self, key: str, tokens: int, inline: Limit | None = None, *, now_us: int | None = None
    ) -> tuple[list[str], list[int | str]]:
        """KEYS and ARGV of the check script for one check (used by pipelines too)."""
        mode: Mode = "d" if inline is None else "i"
        limit_args = self._default_args if inline is None else self._limit_args(inline)
        now = "" if now_us is None else now_us
        return [self._keys.config(key), self._keys.state(key)], [tokens, mode, now, *limit_args]

    async def check(
        self, key: str, tokens: int = 1, inline: Limit | None = None, *, now_us: int | None = None
    ) -> CheckResult:
        """Spend ``tokens`` from ``key``'s limit (or peek with 0).

        ``now_us`` overrides the server clock; only tests pass it.
        """
        keys, args = self.script_args(key, tokens, inline, now_us=now_us)
        reply = await self._run(keys, args, "check")
        return self.result(reply, tokens)

    @staticmethod
    def result(reply: list[int], tokens: int) -> CheckResult:
        """Turn a script reply into a result, raising for the two refusal codes."""
        code = int(reply[0])
        if code == -1:
            raise LimitValidationError(
                f"tokens ({tokens}) exceeds the limit's capacity ({int(reply[1])}); "
                "such a check can never succeed",
                field="tokens",
            )
        if code == -2:
            raise NotFoundError("no limit is set for this key")
        return CheckResult.from_reply(reply)

    async def check_many(
        self, items: list[tuple[str, int]]
    ) -> list[CheckResult | LimitValidationError]:
        """Independent checks, answered together in one pipelined round trip.

        An item whose tokens exceed its capacity gets its LimitValidationError back; Redis
        being unavailable fails the whole call.
        """
        calls = [self.script_args(key, tokens) for key, tokens in items]
        replies: list[Any] = await self._guarded(
            partial(CHECK.run_many, self._redis, calls), "check_many"
        )
        out: list[CheckResult | LimitValidationError] = []
        for (_, tokens), reply in zip(items, replies, strict=True):
            if isinstance(reply, UNAVAILABLE_ERRORS):
                raise RedisUnavailableError(f"check_many: {type(reply).__name__}: {reply}")
            if isinstance(reply, Exception):
                raise reply
            try:
                out.append(self.result(reply, tokens))
            except LimitValidationError as exc:
                out.append(exc)
        return out

    async def check_all(
        self, items: list[tuple[str, int]], *, now_us: int | None = None
    ) -> list[CheckResult | LimitValidationError]:
        """All-or-nothing: spend from every key only if every key allows, atomically.

        Items naming one key twice are merged (their tokens add up). On a Redis Cluster
        every key must map to one hash slot (LimitValidationError otherwise).
        """
        merged: dict[str, int] = {}
        for key, tokens in items:
            merged[key] = merged.get(key, 0) + tokens
        keys = [name for key in merged for name in (self._keys.config(key), self._keys.state(key))]
        if is_cluster(self._redis) and len({key_slot(k.encode()) for k in keys}) > 1:
            raise LimitValidationError(
                "all_or_nothing on a Redis Cluster needs keys in one hash slot; "
                "these keys map to different slots",
                field="checks",
            )
        args: list[int | str] = ["" if now_us is None else now_us, *self._default_args]
        args += list(merged.values())
        reply: list[Any] = await self._guarded(
            partial(CHECK_ALL, self._redis, keys, args), "check_all"
        )
        by_key: dict[str, CheckResult | LimitValidationError] = {}
        for key, item in zip(merged, reply[1:], strict=True):
            try:
                by_key[key] = self.result(item, merged[key])
            except LimitValidationError as exc:
                by_key[key] = exc
        return [by_key[key] for key, _ in items]

    async def status(self, key: str, *, now_us: int | None = None) -> CheckResult:
        """The key's stored limit and live state; consumes nothing. NotFoundError if none."""
        keys, args = self.script_args(key, 0, None, now_us=now_us)
        args[1] = "p"
        reply = await self._run(keys, args, "status")
        return self.result(reply, 0)
