"""The Lua scripts, loaded from ``core/lua`` through importlib.resources.

``check`` is assembled from one file per algorithm plus ``decide.lua`` (which reads the key's
limit and dispatches) and ``check.lua`` (the entry point), so a check is a single script call
whatever the key's algorithm; ``check_all`` shares the same parts. Scripts are run by SHA;
when the server answers ``NOSCRIPT`` (a restart, a failover, ``SCRIPT FLUSH``) the call is
sent again with the script's source (``EVAL``), which cannot meet ``NOSCRIPT`` and caches
the script for the next ``EVALSHA``, even when the cache is emptied again meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from core.redis_client import cluster_concurrency, is_cluster

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

__all__ = ["APPLY", "CHECK", "CHECK_ALL", "FINISH", "Script"]

_CHECK_PARTS = (
    "prelude.lua",
    "token_bucket.lua",
    "sliding_window.lua",
    "fixed_window.lua",
    "gcra.lua",
    "decide.lua",
)


def _read(name: str) -> str:
    return files("core").joinpath("lua").joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script known by its SHA1, run with EVALSHA and reloaded on NOSCRIPT."""

    name: str
    source: str
    sha: str

    @classmethod
    def from_source(cls, name: str, source: str) -> Script:
        return cls(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())

    async def __call__(self, client: Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)

    async def run_many(self, client: Redis, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run the script once per ``(keys, args)``, in order, in one pipelined round trip.

        Each reply is the script's result or the exception it raised. Calls that met
        ``NOSCRIPT`` (the script cache was emptied) are run again, in order, with the source.
        """
        if is_cluster(client):
            return await self._per_key(client, calls)
        replies = await self._pipeline(client, calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            again = await self._pipeline(client, [calls[i] for i in missing], by_source=True)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _per_key(self, client: Redis, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Cluster pipelines refuse scripts: run calls concurrently, but those on one key
        in their given order (the apply script's results depend on it)."""
        replies: list[Any] = [None] * len(calls)
        chains: dict[str, list[int]] = defaultdict(list)
        for index, (keys, _) in enumerate(calls):
            chains[keys[0]].append(index)

        # The node pools refuse (MaxConnectionsError) rather than wait once
        # REDIS_MAX_CONNECTIONS are busy: bound what is in flight.
        limit = cluster_concurrency(client)

        async def run(indices: list[int]) -> None:
            for i in indices:
                try:
                    async with limit:
                        replies[i] = await self(client, *calls[i])
                except Exception as exc:  # returned per call, as a pipeline does
                    replies[i] = exc

        await asyncio.gather(*(run(chain) for chain in chains.values()))
        return replies

    async def _pipeline(
        self, client: Redis, calls: list[tuple[list[str], list[Any]]], *, by_source: bool = False
    ) -> list[Any]:
        pipe: Pipeline = client.pipeline(transaction=False)
        for keys, args in calls:
            if by_source:
                pipe.eval(self.source, len(keys), *keys, *args)
            else:
                pipe.evalsha(self.sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies


_DECIDE = "\n".join(_read(p) for p in _CHECK_PARTS)
CHECK = Script.from_source("check", _DECIDE + "\n" + _read("check.lua"))
CHECK_ALL = Script.from_source("check_all", _DECIDE + "\n" + _read("check_all.lua"))
APPLY = Script.from_source("apply", _read("apply.lua"))
FINISH = Script.from_source("finish", _read("finish.lua"))
