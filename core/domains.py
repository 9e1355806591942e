"""Envoy RLS domains held in process: loaded from Redis, refreshed on change.

Workers store each domain (``core/lua/apply_document.lua``) and announce the change;
:class:`DomainSync` loads them all at start, again on a ``rls_domain_changed``
notification, and — so that a lost notification cannot leave a process stale for more than
about a second — whenever the version counter differs from the one it loaded (one GET a
second), as :class:`core.policies.PolicySync` does for policies. Nothing here knows the
protocol: the edge that serves it (``api/rls``) reads :attr:`DomainSync.domains` and
:attr:`DomainSync.version`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from core.errors import RedisUnavailableError
from core.gateway import text
from core.scripts import APPLY_DOCUMENT, READ_POLICIES
from schemas.rls import RlsDomain

if TYPE_CHECKING:
    from core.gateway import Gateway
    from core.keys import KeySpace

__all__ = ["DomainResult", "DomainSync", "apply_domain", "decode_domain"]

_log = logging.getLogger("throttler.rls")
_decoder = msgspec.json.Decoder(RlsDomain)


def decode_domain(raw: bytes | str) -> tuple[str, RlsDomain]:
    """A stored domain: (the version that set it, the domain)."""
    version, _, document = text(raw).partition(" ")
    return version, _decoder.decode(document)


@dataclass(frozen=True, slots=True)
class DomainResult:
    """What applying a domain change did (``apply_document.lua``'s outcome)."""

    outcome: str
    before_version: str


async def apply_domain(
    gateway: Gateway, keys: KeySpace, name: str, domain: RlsDomain | None, version: str = ""
) -> DomainResult:
    """Create or replace domain ``name``, or delete it when ``domain`` is None."""
    script_keys = [keys.rls_domains, keys.rls_gone, keys.rls_version]
    if domain is None:
        args = ["del", name, version, ""]
    else:
        args = ["set", name, version, msgspec.json.encode(domain).decode()]
    outcome, before = await gateway.run(APPLY_DOCUMENT, script_keys, args)
    return DomainResult(text(outcome), text(before))


class DomainSync:
    """Keeps :attr:`domains` equal to the domains in Redis."""

    def __init__(self, gateway: Gateway, keys: KeySpace, interval_s: float = 1.0) -> None:
        self._gateway = gateway
        self._keys = keys
        self._interval = interval_s
        self._wake = anyio.Event()
        self.domains: dict[str, RlsDomain] = {}
        self.version = -1  # nothing loaded yet

    async def load(self) -> None:
        """Read every domain and the version they are at."""
        keys = [self._keys.rls_domains, self._keys.rls_version]
        reply: list[Any] = await self._gateway.run(READ_POLICIES, keys, [])
        version, flat = int(reply[0]), reply[1:]
        domains = {}
        for name, raw in zip(flat[::2], flat[1::2], strict=True):
            try:
                domains[text(name)] = decode_domain(raw)[1]
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                _log.warning("ignored RLS domain %r that does not decode: %s", text(name), exc)
        self.domains, self.version = domains, version

    def changed(self) -> None:
        """A notification said a domain changed: load again now."""
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: load when told to, or when the version in Redis moved on."""
        while True:
            with anyio.move_on_after(self._interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                raw = await self._gateway.call(
                    "rls_version", self._gateway.client.get, self._keys.rls_version
                )
                if int(text(raw) or 0) != self.version:
                    await self.load()
            except RedisUnavailableError as exc:
                _log.debug("RLS domains not refreshed: %s", exc)
