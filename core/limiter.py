"""The check path: one script call decides, spends and reports."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.errors import LimitValidationError, NotFoundError
from core.scripts import CHECK, CHECK_ALL, CHECK_MANY, decode_limits, limit_args
from schemas.limits import Limit

if TYPE_CHECKING:
    from collections.abc import Sequence

    from core.gateway import Gateway
    from core.keys import KeySpace
    from schemas.limits import Algorithm

__all__ = ["CheckResult", "Limiter"]

#: Most all-or-nothing keys in one call: the script decides each key up to three times.
MAX_ALL_OR_NOTHING = 100
#: Most checks of a batch decided by one script call (bounds how long one call runs).
CHECKS_PER_CALL = 100


class CheckResult:
    """A decision and the limit that made it (the one that denied, else the one with the
    least remaining). Times in ms; ``now_ms`` is Redis time."""

    __slots__ = (
        "allowed",
        "index",
        "limit",
        "limits",
        "now_ms",
        "remaining",
        "reset_after_ms",
        "retry_after_ms",
        "rule",
    )

    def __init__(
        self,
        allowed: bool,
        remaining: int,
        reset_after_ms: int,
        retry_after_ms: int,
        now_ms: int,
        limits: tuple[Limit, ...],
        index: int,
    ) -> None:
        self.allowed = allowed
        self.remaining = remaining
        self.reset_after_ms = reset_after_ms
        self.retry_after_ms = retry_after_ms
        self.now_ms = now_ms
        self.limits = limits
        self.index = index
        self.rule = limits[index]
        self.limit = self.rule.capacity

    @property
    def algorithm(self) -> Algorithm:
        return self.rule.algorithm

    @property
    def requests(self) -> int:
        return self.rule.requests

    @property
    def window_ms(self) -> int:
        return self.rule.window_ms

    @property
    def burst(self) -> int:
        """The burst of a bucket or GCRA limit; 0 for the windows."""
        return self.rule.burst or 0


class Limiter:
    """Checks against a key's own limits in Redis, else the limits it is given (default)."""

    __slots__ = ("_default", "_default_args", "_gateway", "_inline_ttl", "_keys", "_own")

    def __init__(
        self,
        gateway: Gateway,
        keys: KeySpace,
        default: Limit | Sequence[Limit],
        *,
        inline_ttl_ms: int = 86_400_000,
    ) -> None:
        self._gateway = gateway
        self._keys = keys
        self._default = (default,) if isinstance(default, Limit) else tuple(default)
        self._default_args = limit_args(self._default)
        self._inline_ttl = inline_ttl_ms
        self._own: dict[str, tuple[Limit, ...]] = {}  # decoded own limits, by their text

    def script_args(
        self,
        key: str,
        tokens: int,
        inline: Limit | None = None,
        *,
        now_us: int | None = None,
        mode: str | None = None,
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the check script for one check (core/lua/prelude.lua)."""
        now: Any = "" if now_us is None else now_us
        given = self._default_args if inline is None else limit_args((inline,))
        mode = mode or ("d" if inline is None else "i")
        return self._keys.script_keys(key), [now, mode, self._inline_ttl, tokens, *given]

    async def check(
        self, key: str, tokens: int = 1, inline: Limit | None = None, *, now_us: int | None = None
    ) -> CheckResult:
        """Spend ``tokens`` from every limit of ``key`` (or peek with 0).

        ``inline`` is stored as the key's own limit when it has none (with a TTL: see
        INLINE_LIMIT_TTL_MS). ``now_us`` overrides the server clock; only tests pass it.
        """
        keys, args = self.script_args(key, tokens, inline, now_us=now_us)
        reply = await self._gateway.run(CHECK, keys, args)
        return self.result(reply, tokens, self._default if inline is None else (inline,))

    def result(self, reply: list[Any], tokens: int, given: tuple[Limit, ...]) -> CheckResult:
        """Turn a script reply into a result, raising for the two refusal codes."""
        code, index, remaining, reset, retry, now, own = reply
        limits = self._decode(own) if own else given
        if code == -1:
            raise LimitValidationError(
                f"tokens ({tokens}) exceeds the limit's capacity "
                f"({limits[index].capacity}); such a check can never succeed",
                field="tokens",
            )
        if code == -2:
            raise NotFoundError("no limit is set for this key")
        return CheckResult(code == 1, remaining, reset, retry, now, limits, index)

    def _decode(self, own: str) -> tuple[Limit, ...]:
        limits = self._own.get(own)
        if limits is None:
            if len(self._own) >= 10_000:
                self._own.clear()
            limits = self._own[own] = decode_limits(own)
        return limits

    async def check_many(
        self, items: list[tuple[str, int]]
    ) -> list[CheckResult | LimitValidationError]:
        """Independent checks: off a cluster, up to :data:`CHECKS_PER_CALL` of them decided
        by each script call, the calls pipelined; on a cluster one call per key.

        An item whose tokens exceed its capacity gets its LimitValidationError back; Redis
        being unavailable fails the whole call.
        """
        if self._gateway.cluster:
            calls = [self.script_args(key, tokens) for key, tokens in items]
            replies = await self._gateway.run_many(CHECK, calls)
        else:
            replies = await self._many(items)
        out: list[CheckResult | LimitValidationError] = []
        for (_, tokens), reply in zip(items, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            try:
                out.append(self.result(reply, tokens, self._default))
            except LimitValidationError as exc:
                out.append(exc)
        return out

    async def _many(self, items: list[tuple[str, int]]) -> list[Any]:
        calls = []
        for start in range(0, len(items), CHECKS_PER_CALL):
            chunk = items[start : start + CHECKS_PER_CALL]
            keys = [name for key, _ in chunk for name in self._keys.script_keys(key)]
            calls.append((keys, ["", *(tokens for _, tokens in chunk), *self._default_args]))
        replies: list[Any] = []
        for reply in await self._gateway.run_many(CHECK_MANY, calls):
            if isinstance(reply, Exception):
                raise reply
            replies += reply
        return replies

    async def check_all(
        self, items: list[tuple[str, int]], *, now_us: int | None = None
    ) -> list[CheckResult | LimitValidationError]:
        """All-or-nothing: spend from every key only if every key allows, atomically.

        Items naming one key twice are merged (their tokens add up); at most
        :data:`MAX_ALL_OR_NOTHING` keys. On a Redis Cluster every key must map to one hash
        slot (LimitValidationError otherwise).
        """
        merged: dict[str, int] = {}
        for key, tokens in items:
            merged[key] = merged.get(key, 0) + tokens
        if len(merged) > MAX_ALL_OR_NOTHING:
            raise LimitValidationError(
                f"all_or_nothing takes at most {MAX_ALL_OR_NOTHING} distinct keys "
                f"(got {len(merged)})",
                field="checks",
            )
        keys = [name for key in merged for name in self._keys.script_keys(key)]
        if not self._gateway.one_slot(keys):
            raise LimitValidationError(
                "all_or_nothing on a Redis Cluster needs keys in one hash slot; "
                "these keys map to different slots",
                field="checks",
            )
        args: list[Any] = ["" if now_us is None else now_us, *merged.values()]
        args += self._default_args
        reply: list[Any] = await self._gateway.run(CHECK_ALL, keys, args)
        by_key: dict[str, CheckResult | LimitValidationError] = {}
        for key, item in zip(merged, reply[1:], strict=True):
            try:
                by_key[key] = self.result(item, merged[key], self._default)
            except LimitValidationError as exc:
                by_key[key] = exc
        return [by_key[key] for key, _ in items]

    async def status(self, key: str, *, now_us: int | None = None) -> CheckResult:
        """The key's own limits and live state; consumes nothing. NotFoundError if none."""
        keys, args = self.script_args(key, 0, now_us=now_us, mode="p")
        reply = await self._gateway.run(CHECK, keys, args)
        return self.result(reply, 0, self._default)
