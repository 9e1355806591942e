"""Named documents (policies, Envoy RLS domains) held in process, kept equal to Redis.

Workers store each document in one hash and bump a version counter beside it; a
:class:`DocumentSync` loads them all at start, again when a notification says one changed,
and — so that a lost notification cannot leave a process stale for more than about a
second — whenever the counter differs from the version it loaded (one GET a second).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import msgspec

from core.errors import RedisUnavailableError
from core.gateway import text
from core.scripts import READ_POLICIES

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from core.gateway import Gateway

__all__ = ["DocumentSync"]

T = TypeVar("T")


class DocumentSync(Generic[T]):
    """Loads every document of hash ``documents`` (decoded by ``decode``) with the version of
    counter ``version_key``, and hands both to :meth:`loaded` (subclasses keep them)."""

    def __init__(
        self,
        gateway: Gateway,
        documents: str,
        version_key: str,
        decode: Callable[[bytes | str], T],
        *,
        what: str,
        log: logging.Logger,
        op: str,
        interval_s: float = 1.0,
    ) -> None:
        self._gateway = gateway
        self._documents, self._version_key = documents, version_key
        self._decode, self._what, self._log, self._op = decode, what, log, op
        self._interval = interval_s
        self._wake = anyio.Event()
        self.version = -1  # nothing loaded yet

    def loaded(self, documents: dict[str, T], version: int) -> None:
        """Keep what :meth:`load` read (subclasses add where it goes)."""
        self.version = version

    async def load(self) -> None:
        """Read every document and the version they are at."""
        keys = [self._documents, self._version_key]
        reply: list[Any] = await self._gateway.run(READ_POLICIES, keys, [])
        version, flat = int(reply[0]), reply[1:]
        documents = {}
        for name, raw in zip(flat[::2], flat[1::2], strict=True):
            try:
                documents[text(name)] = self._decode(raw)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                self._log.warning(
                    "ignored %s %r that does not decode: %s", self._what, text(name), exc
                )
        self.loaded(documents, version)

    def changed(self) -> None:
        """A notification said a document changed: load again now."""
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: load when told to, or when the version in Redis moved on."""
        while True:
            with anyio.move_on_after(self._interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                raw = await self._gateway.call(
                    self._op, self._gateway.client.get, self._version_key
                )
                if int(text(raw) or 0) != self.version:
                    await self.load()
            except RedisUnavailableError as exc:
                self._log.debug("%ss not refreshed: %s", self._what, exc)
