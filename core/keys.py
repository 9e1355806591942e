"""Every Redis key and channel name, built from one configurable prefix.

A limit's keys share the hash tag ``{<key>}`` so that every script touching them runs on
one Redis Cluster slot. Rate-limit keys cannot contain ``{`` or ``}`` (see
:data:`KEY_PATTERN`), so a caller cannot break out of the tag.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from core.errors import InvalidKeyError
from schemas.limits import KEY_PATTERN, MAX_KEY_BYTES

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["APPLIERS", "AUDITORS", "KEY_PATTERN", "KeySpace", "validate_key"]

APPLIERS = "appliers"  #: the consumer group that applies config entries
AUDITORS = "audit"  #: the consumer group that traces and logs audit entries

_KEY_RE = re.compile(KEY_PATTERN)


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid rate-limit key, else raise :class:`InvalidKeyError`."""
    if not _KEY_RE.fullmatch(key) or len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidKeyError(
            "key must be 1-256 characters (at most 256 bytes of UTF-8) without whitespace, "
            f"control characters, / {{ }} or * (got {len(key.encode())} bytes"
            f"{_first_bad(key)})"
        )
    return key


def _first_bad(key: str) -> str:
    for ch in key:
        if not _KEY_RE.fullmatch(ch):
            return f", first invalid character {ch!r}"
    return ""


_ESCAPES = str.maketrans({"%": "%25", "/": "%2F", "=": "%3D", "{": "%7B", "}": "%7D"})


def _escape(part: str) -> str:
    return part.translate(_ESCAPES)


class KeySpace:
    """Key and channel names under one prefix (``KEY_PREFIX``)."""

    __slots__ = (
        "_leases_fmt",
        "_limit_fmt",
        "_log_fmt",
        "audit_stream",
        "config_stream",
        "dead_stream",
        "heartbeat_prefix",
        "notify_channel",
        "policies",
        "policy_gone",
        "policy_patterns",
        "policy_version",
        "prefix",
        "rls_domains",
        "rls_gone",
        "rls_version",
    )

    def __init__(self, prefix: str = "throttler", db: int = 0) -> None:
        self.prefix = prefix
        self._limit_fmt = prefix + ":{%s}"
        self._log_fmt = prefix + ":{%s}:l"
        self._leases_fmt = prefix + ":{%s}:c"
        # The three streams share the hash tag {<prefix>}: one script acks a config entry
        # and records its outcome atomically, so they must live in one cluster slot.
        self.config_stream = f"{{{prefix}}}:config"
        self.audit_stream = f"{{{prefix}}}:audit"
        self.dead_stream = f"{{{prefix}}}:dead"
        # Policies share that tag too: their apply script reads and writes them together.
        self.policies = f"{{{prefix}}}:policies"
        self.policy_patterns = f"{{{prefix}}}:patterns"
        self.policy_gone = f"{{{prefix}}}:policy-gone"
        self.policy_version = f"{{{prefix}}}:policy-version"
        # Envoy RLS domains (descriptor trees), beside the policies and for the same reason.
        self.rls_domains = f"{{{prefix}}}:rls-domains"
        self.rls_gone = f"{{{prefix}}}:rls-gone"
        self.rls_version = f"{{{prefix}}}:rls-version"
        self.heartbeat_prefix = f"{prefix}:worker:"
        # Pub/Sub channels are server-wide (they ignore the database number): a deployment
        # on another database of the same server gets channels of its own.
        self.notify_channel = f"{prefix}:limits" if db == 0 else f"{prefix}:db{db}:limits"

    def limit(self, key: str) -> str:
        """The hash of a key: its own limits and version, and the state of every limit it is
        checked under (fields in core/lua/prelude.lua)."""
        return self._limit_fmt % key

    def log(self, key: str) -> str:
        """The sorted set logging a key's admitted checks, for its sliding-window limits."""
        return self._log_fmt % key

    def leases(self, key: str) -> str:
        """The sorted set of the leases a key's concurrency limits hold (id -> expiry)."""
        return self._leases_fmt % key

    def script_keys(self, key: str) -> list[str]:
        """KEYS of the check and apply scripts for one key (one hash slot)."""
        return [self._limit_fmt % key, self._log_fmt % key, self._leases_fmt % key]

    @staticmethod
    def descriptor_key(domain: str, entries: Sequence[tuple[str, str]]) -> str:
        """The rate-limit key that counts one descriptor of a domain (Envoy's RLS):
        ``rls/<domain>/<key>=<value>/...`` with ``%``, ``/``, ``=``, ``{`` and ``}``
        percent-encoded. A key of the HTTP API never contains ``/``, so the two cannot
        meet; with :meth:`script_keys` it gets its own hash tag like any key."""
        parts = [_escape(domain)]
        parts += [f"{_escape(k)}={_escape(v)}" for k, v in entries]
        return "rls/" + "/".join(parts)

    def heartbeat(self, group: str, consumer: str) -> str:
        return f"{self.heartbeat_prefix}{group}:{consumer}"
