"""The check path: one script call decides, spends and reports.

A key is checked under its own limits when it has some (the script reads them), else under
the limits :class:`core.policies.PolicyTable` resolves for it (passed to the script), so no
script ever reads across hash slots.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, Literal

from core.errors import LimitValidationError, NoConcurrencyLimitError
from core.policies import PolicyTable, Resolved
from core.scripts import ACQUIRE, CHECK, CHECK_ALL, CHECK_MANY, REFUND, RELEASE, decode_limits
from schemas.limits import Limit

if TYPE_CHECKING:
    from collections.abc import Sequence

    from core.gateway import Gateway
    from core.keys import KeySpace
    from schemas.limits import Algorithm

__all__ = [
    "CHECKS_PER_CALL",
    "MAX_ALL_OR_NOTHING",
    "CheckResult",
    "Lease",
    "Limiter",
    "Source",
]

#: Most all-or-nothing keys in one call: the script decides each key up to three times.
MAX_ALL_OR_NOTHING = 100
#: Most checks of a batch decided by one script call (bounds how long one call runs).
CHECKS_PER_CALL = 100

Source = Literal["key", "policy", "default"]


class CheckResult:
    """A decision and the limit that made it (the one that denied, else the one with the
    least remaining), among all the limits the key was checked under. Times in ms;
    ``now_ms`` is Redis time."""

    __slots__ = (
        "allowed",
        "index",
        "limit",
        "limits",
        "now_ms",
        "policy",
        "remaining",
        "reset_after_ms",
        "retry_after_ms",
        "rule",
        "shadow",
        "source",
        "usage",
        "wait_ms",
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
        *,
        source: Source = "default",
        policy: str | None = None,
        shadow: bool = False,
        usage: list[tuple[int, int]] | None = None,
        wait_ms: int = 0,
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
        self.source = source
        self.policy = policy
        self.shadow = shadow
        self.usage = usage  # status only: (remaining, reset_after_ms) of every limit
        self.wait_ms = wait_ms  # allowed by a reservation: start after this many ms

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


class Lease:
    """A lease taken by :meth:`Limiter.acquire` (``id`` empty when it was denied)."""

    __slots__ = ("expires_in_ms", "id", "result")

    def __init__(self, result: CheckResult, lease_id: str, expires_in_ms: int) -> None:
        self.result = result
        self.id = lease_id
        self.expires_in_ms = expires_in_ms


def new_lease_id() -> str:
    """A lease id: 128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


class Limiter:
    """Checks keys against their own limits in Redis, else the limits policies give them."""

    __slots__ = ("_gateway", "_inline_ttl", "_keys", "_own", "policies")

    def __init__(
        self,
        gateway: Gateway,
        keys: KeySpace,
        default: Limit | Sequence[Limit] | PolicyTable,
        *,
        inline_ttl_ms: int = 86_400_000,
    ) -> None:
        self._gateway = gateway
        self._keys = keys
        if isinstance(default, PolicyTable):
            self.policies = default
        else:
            limits = (default,) if isinstance(default, Limit) else tuple(default)
            self.policies = PolicyTable(Resolved.of(None, limits))
        self._inline_ttl = inline_ttl_ms
        self._own: dict[str, tuple[tuple[Limit, ...], bool]] = {}  # decoded own limits

    def _call(
        self,
        key: str,
        tokens: int,
        inline: Limit | None,
        now_us: int | None,
        mode: str | None,
        max_wait_ms: int = 0,
    ) -> tuple[list[str], list[Any], Resolved]:
        given = self.policies.resolve(key)
        if inline is not None and given.name is None:
            # Only a key no policy covers may get an inline limit: a policy is configuration,
            # and a check never overrides what the config path set.
            given = Resolved.of(None, (inline,))
        else:
            inline = None
        now: Any = "" if now_us is None else now_us
        mode = mode or ("d" if inline is None else "i")
        args = [now, mode, self._inline_ttl, tokens, max_wait_ms, *given.args]
        return self._keys.script_keys(key), args, given

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
        keys, args, _ = self._call(key, tokens, inline, now_us, mode)
        return keys, args

    async def check(
        self,
        key: str,
        tokens: int = 1,
        inline: Limit | None = None,
        *,
        max_wait_ms: int = 0,
        now_us: int | None = None,
    ) -> CheckResult:
        """Spend ``tokens`` from every limit of ``key`` (or peek with 0).

        ``inline`` is stored as the key's own limit when it has none and no policy covers
        it (with a TTL: see INLINE_LIMIT_TTL_MS); else it is ignored. With ``max_wait_ms``,
        a check that would be denied but whose tokens come within that time reserves them:
        allowed, with ``wait_ms`` to wait before starting (token_bucket and gcra limits
        only). ``now_us`` overrides the server clock; only tests pass it.
        """
        keys, args, given = self._call(key, tokens, inline, now_us, None, max_wait_ms)
        return self.result(await self._gateway.run(CHECK, keys, args), tokens, given)

    # -- spend primitives: leases and refunds -----------------------------------------

    async def acquire(self, key: str, ttl_ms: int = 0, *, now_us: int | None = None) -> Lease:
        """Take a lease from every concurrency limit of ``key`` and one token from each of
        its rate limits, or nothing. ``ttl_ms`` (0: the limit's ``window_ms``) shortens the
        lease's lifetime, never lengthens it. Raises :class:`NoConcurrencyLimitError` when
        the key has no concurrency limit."""
        given = self.policies.resolve(key)
        lease_id = new_lease_id()
        now: Any = "" if now_us is None else now_us
        args = [now, lease_id, ttl_ms, *given.args]
        reply = await self._gateway.run(ACQUIRE, self._keys.script_keys(key), args)
        if reply[0] == -2:
            raise NoConcurrencyLimitError(
                "this key has no concurrency limit: give it one "
                '({"algorithm": "concurrency", "requests": <leases>, "window_ms": <lifetime>}) '
                "with POST /rate-limit/{key} or a policy"
            )
        result = self.result(reply[:7], 1, given)
        if not result.allowed:
            return Lease(result, "", 0)
        return Lease(result, lease_id, int(reply[7]))

    async def release(self, key: str, lease: str, *, now_us: int | None = None) -> bool:
        """Give back a lease; False when ``key`` holds no such lease (unknown or expired)."""
        now: Any = "" if now_us is None else now_us
        reply = await self._gateway.run(RELEASE, [self._keys.leases(key)], [now, lease])
        return int(reply) == 1

    async def refund(self, key: str, tokens: int, *, now_us: int | None = None) -> CheckResult:
        """Give back up to ``tokens`` spent tokens to every rate limit of ``key``, never
        above a limit's capacity; the result is a peek after the refund."""
        given = self.policies.resolve(key)
        now: Any = "" if now_us is None else now_us
        reply = await self._gateway.run(
            REFUND, self._keys.script_keys(key), [now, tokens, *given.args]
        )
        return self.result(reply, 0, given)

    def result(self, reply: list[Any], tokens: int, given: Resolved) -> CheckResult:
        """Turn a script reply into a result, raising for the two refusal codes."""
        code, index, remaining, reset, retry, now, own = reply[:7]
        if own:
            limits, shadow = self._decode(own)
            source: Source = "key"
            policy = None
        else:
            limits, shadow, policy = given.limits, given.shadow, given.name
            source = "default" if policy is None else "policy"
        if code == -1:
            raise LimitValidationError(
                f"tokens ({tokens}) exceeds the limit's capacity "
                f"({limits[index].capacity}); such a check can never succeed",
                field="tokens",
            )
        usage = None
        if len(reply) > 7:
            flat = reply[7]
            usage = list(zip(flat[::2], flat[1::2], strict=True))
        wait = 0
        if code == 1:  # allowed: the 5th value is a reservation's wait
            wait, retry = retry, 0
        return CheckResult(
            code == 1,
            remaining,
            reset,
            retry,
            now,
            limits,
            index,
            source=source,
            policy=policy,
            shadow=shadow,
            usage=usage,
            wait_ms=wait,
        )

    def _decode(self, own: str) -> tuple[tuple[Limit, ...], bool]:
        found = self._own.get(own)
        if found is None:
            if len(self._own) >= 10_000:
                self._own.clear()
            found = self._own[own] = decode_limits(own)
        return found

    def _grouped_args(
        self, items: list[tuple[str, int]], given: list[Resolved] | None = None
    ) -> tuple[list[Any], list[Resolved]]:
        """ARGV after ``now`` for check_many/check_all: the distinct limit sets, then every
        key's tokens and set (decide.lua ``limit_sets``/``key_item``); and each item's limits
        (``given``, or what the policies resolve for its key)."""
        sets: dict[int, int] = {}
        flat: list[Any] = []
        pairs: list[Any] = []
        if given is None:
            given = [self.policies.resolve(key) for key, _ in items]
        for (_, tokens), resolved in zip(items, given, strict=True):
            number = sets.get(id(resolved))
            if number is None:
                number = sets[id(resolved)] = len(sets) + 1
                flat += resolved.args
            pairs += (tokens, number)
        return [len(sets), *flat, *pairs], given

    async def check_many(
        self, items: list[tuple[str, int]]
    ) -> list[CheckResult | LimitValidationError]:
        """Independent checks: off a cluster, up to :data:`CHECKS_PER_CALL` of them decided
        by each script call, the calls pipelined; on a cluster one call per key.

        An item whose tokens exceed its capacity gets its LimitValidationError back; Redis
        being unavailable fails the whole call.
        """
        if self._gateway.cluster:
            made = [self._call(key, tokens, None, None, None) for key, tokens in items]
            replies = await self._gateway.run_many(CHECK, [(k, a) for k, a, _ in made])
            given = [resolved for _, _, resolved in made]
        else:
            replies, given = await self._many(items)
        out: list[CheckResult | LimitValidationError] = []
        for (_, tokens), reply, resolved in zip(items, replies, given, strict=True):
            if isinstance(reply, Exception):
                raise reply
            try:
                out.append(self.result(reply, tokens, resolved))
            except LimitValidationError as exc:
                out.append(exc)
        return out

    async def _many(self, items: list[tuple[str, int]]) -> tuple[list[Any], list[Resolved]]:
        calls = []
        given: list[Resolved] = []
        for start in range(0, len(items), CHECKS_PER_CALL):
            chunk = items[start : start + CHECKS_PER_CALL]
            keys = [name for key, _ in chunk for name in self._keys.script_keys(key)]
            args, resolved = self._grouped_args(chunk)
            calls.append((keys, ["", *args]))
            given += resolved
        replies: list[Any] = []
        for reply in await self._gateway.run_many(CHECK_MANY, calls):
            if isinstance(reply, Exception):
                raise reply
            replies += reply
        return replies, given

    async def check_all(
        self,
        items: list[tuple[str, int]],
        *,
        given: dict[str, Resolved] | None = None,
        now_us: int | None = None,
    ) -> list[CheckResult | LimitValidationError]:
        """All-or-nothing: spend from every key only if every key allows, atomically.

        Items naming one key twice are merged (their tokens add up); at most
        :data:`MAX_ALL_OR_NOTHING` keys. Keys without limits of their own are checked under
        ``given[key]`` when given, else what the policies resolve. On a Redis Cluster every
        key must map to one hash slot (LimitValidationError otherwise).
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
        chosen = None if given is None else [given[key] for key in merged]
        args, resolved_all = self._grouped_args(list(merged.items()), chosen)
        now: Any = "" if now_us is None else now_us
        reply: list[Any] = await self._gateway.run(CHECK_ALL, keys, [now, *args])
        by_key: dict[str, CheckResult | LimitValidationError] = {}
        for (key, tokens), item, resolved in zip(
            merged.items(), reply[1:], resolved_all, strict=True
        ):
            try:
                by_key[key] = self.result(item, tokens, resolved)
            except LimitValidationError as exc:
                by_key[key] = exc
        return [by_key[key] for key, _ in items]

    async def spend_under(self, key: str, limits: Resolved, tokens: int = 1) -> CheckResult:
        """Spend from ``key`` under ``limits`` (one script call), for the service's own
        limits (failed auth, mutations): ``key`` must be one no caller can name (e.g. with a
        ``/``, which key validation refuses), so that it never has limits of its own."""
        keys = self._keys.script_keys(key)
        reply = await self._gateway.run(
            CHECK, keys, ["", "d", self._inline_ttl, tokens, 0, *limits.args]
        )
        return self.result(reply, tokens, limits)

    async def status(self, key: str, *, now_us: int | None = None) -> CheckResult:
        """The limits ``key`` is checked under, where they come from, and the live usage of
        each (``usage``); spends and creates nothing."""
        # The limits resolved once, before the call: a policy loaded while it runs must not
        # pair the reply with other limits than those it was computed for.
        keys, args, given = self._call(key, 0, None, now_us, "s")
        reply = await self._gateway.run(CHECK, keys, args)
        return self.result(reply, 0, given)
