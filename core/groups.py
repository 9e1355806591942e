"""Groups of keys decided together by one script call (``core/lua/check_group.lua``).

An edge that checks several keys for one request (Envoy's RLS: one key per descriptor)
gives each key its tokens and limits, enforced or advisory (shadow). Off a cluster the
whole group is one script call: nothing is spent unless every enforced key allows. On a
Redis Cluster the keys are split by hash slot, one call per slot (pipelined, sent at once):
all-or-nothing then holds within each slot, not across slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.crc import key_slot

from core.scripts import CHECK_GROUP

if TYPE_CHECKING:
    from core.gateway import Gateway
    from core.keys import KeySpace

__all__ = ["GroupChecker", "GroupDecision", "GroupItem"]


@dataclass(frozen=True, slots=True)
class GroupItem:
    """One key of a group: ``limits`` as ``core.scripts.limit_args`` builds them (reuse the
    same list object for items under the same limits: it is sent once)."""

    key: str
    tokens: int
    limits: list[int]
    advisory: bool = False


@dataclass(frozen=True, slots=True)
class GroupDecision:
    """What one key decided on its own (``code`` 1 could pay, 0 denied, -1 tokens above its
    capacity), whether its tokens were spent, and what it has left now. Times in ms;
    ``now_ms`` is Redis time."""

    code: int
    remaining: int
    reset_after_ms: int
    retry_after_ms: int
    now_ms: int
    spent: bool


class GroupChecker:
    __slots__ = ("_gateway", "_keys")

    def __init__(self, gateway: Gateway, keys: KeySpace) -> None:
        self._gateway = gateway
        self._keys = keys

    async def check(
        self, items: list[GroupItem], *, now_us: int | None = None
    ) -> list[GroupDecision]:
        """Decide ``items`` (distinct keys); raises RedisUnavailableError when Redis (a
        node) cannot answer."""
        now: Any = "" if now_us is None else now_us
        if not self._gateway.cluster:
            calls = [self._call(items, now)]
            groups = [list(range(len(items)))]
        else:
            by_slot: dict[int, list[int]] = {}
            for index, item in enumerate(items):
                slot = key_slot(self._keys.limit(item.key).encode())
                by_slot.setdefault(slot, []).append(index)
            groups = list(by_slot.values())
            calls = [self._call([items[i] for i in group], now) for group in groups]
        if len(calls) == 1:
            replies = [await self._gateway.run(CHECK_GROUP, *calls[0])]
        else:
            replies = await self._gateway.run_many(CHECK_GROUP, calls)
        out: list[GroupDecision | None] = [None] * len(items)
        for group, reply in zip(groups, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            all_allowed = reply[0] == 1
            for index, one in zip(group, reply[1:], strict=True):
                code, _, remaining, reset, retry, now_ms = one[:6]
                spent = all_allowed and code == 1
                if code == 1 and not spent:
                    remaining += items[index].tokens  # decided as if spent, but was not
                out[index] = GroupDecision(code, remaining, reset, retry, now_ms, spent)
        return [d for d in out if d is not None]

    def _call(self, items: list[GroupItem], now: Any) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        sets: dict[int, int] = {}
        flat: list[Any] = []
        pairs: list[Any] = []
        for item in items:
            keys += self._keys.script_keys(item.key)
            number = sets.get(id(item.limits))
            if number is None:
                number = sets[id(item.limits)] = len(sets) + 1
                flat += item.limits
            pairs += (item.tokens, -number if item.advisory else number)
        return keys, [now, len(sets), *flat, *pairs]
