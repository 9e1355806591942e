"""``REDIS_URL`` for a primary watched by Redis Sentinel: parsed and checked (no I/O).

    redis+sentinel://[user:password@]host1:26379,host2:26379/<service>/<db>[?options]
    rediss+sentinel://...    the same over TLS (to the Sentinels and the data nodes)

* the hosts are the Sentinels (the port defaults to 26379), not the data nodes: the
  primary's address is asked of them, on every new connection;
* ``service`` is the name the Sentinels monitor (``sentinel monitor <service> ...``);
* ``user:password`` are the **data nodes'** credentials, as in ``redis://``; the
  Sentinels' own (``requirepass`` in sentinel.conf) are ``REDIS_SENTINEL_USERNAME`` and
  ``REDIS_SENTINEL_PASSWORD``, so that either can change without the other;
* ``options`` are redis-py's URL options (``ssl_ca_certs=...``), for both kinds of node.

Every error is one line naming the rule, and never repeats the URL (it may hold a password).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from core.errors import SettingsError

__all__ = ["SENTINEL_SCHEMES", "SentinelTarget", "is_sentinel_url", "parse_sentinel_url"]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_DEFAULT_PORT = 26379
_SHAPE = "redis+sentinel://host:26379,host2:26379/<service>/<db>"


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """Where the Sentinels are, which primary to ask them for, and how to talk to it."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = None
    query: str = ""  #: redis-py URL options, passed on as they are


def is_sentinel_url(url: str | None) -> bool:
    return bool(url) and str(url).split("://", 1)[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The target of a ``redis+sentinel://`` URL; :class:`SettingsError` when unusable."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise SettingsError(f"REDIS_URL is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in SENTINEL_SCHEMES:
        raise SettingsError("REDIS_URL must start with redis+sentinel:// or rediss+sentinel://")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_address(h) for h in hosts.split(",") if h.strip())
    if not sentinels:
        raise SettingsError(f"REDIS_URL needs at least one Sentinel host ({_SHAPE})")
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise SettingsError(
            "REDIS_URL needs the service name Sentinel monitors as its path "
            f"(sentinel monitor <service> ...): {_SHAPE}"
        )
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise SettingsError(
            f"REDIS_URL database (after the service name) must be a number: {_SHAPE}"
        )
    tls = scheme == "rediss+sentinel"
    if not tls and any(name.startswith("ssl") for name in parse_qs(parts.query)):
        raise SettingsError("REDIS_URL has ssl_* options: use rediss+sentinel:// for TLS")
    return SentinelTarget(
        sentinels=sentinels,
        service=unquote(segments[0]),
        db=int(segments[1]) if len(segments) == 2 else 0,
        tls=tls,
        username=username,
        password=password,
        query=parts.query,
    )


def _address(text: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` as (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            host, port = text, ""
    if not host:
        raise SettingsError(f"REDIS_URL Sentinel address {text!r} has no host ({_SHAPE})")
    if not port:
        return host, _DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(
            f"REDIS_URL Sentinel address {text!r} must be host:port with a port of 1-65535"
        )
    return host, int(port)
