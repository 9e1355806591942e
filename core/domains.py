"""Envoy RLS domains held in process: loaded from Redis, refreshed on change.

Workers store each domain (``core/lua/apply_document.lua``) and announce the change;
:class:`DomainSync` (a :class:`core.documents.DocumentSync`) loads them all at start, again
on a ``rls_domain_changed`` notification, and within about a second when one is lost.
Nothing here knows the protocol: the edge that serves it (``api/rls``) reads
:attr:`DomainSync.domains` and :attr:`DomainSync.version`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from core.documents import DocumentSync
from core.gateway import text
from core.scripts import APPLY_DOCUMENT
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


def _domain(raw: bytes | str) -> RlsDomain:
    return decode_domain(raw)[1]


class DomainSync(DocumentSync[RlsDomain]):
    """Keeps :attr:`domains` equal to the domains in Redis."""

    def __init__(self, gateway: Gateway, keys: KeySpace, interval_s: float = 1.0) -> None:
        super().__init__(
            gateway,
            keys.rls_domains,
            keys.rls_version,
            _domain,
            what="RLS domain",
            log=_log,
            op="rls_version",
            interval_s=interval_s,
        )
        self.domains: dict[str, RlsDomain] = {}

    def loaded(self, documents: dict[str, RlsDomain], version: int) -> None:
        self.domains = documents
        super().loaded(documents, version)
