"""Settings from the environment (and a ``.env`` file when present).

Every setting is an environment variable named after its field in upper case. Values are
converted and range-checked by msgspec; a bad value raises :class:`SettingsError` naming
the variable, the rule, the value and where it came from (the environment or the .env
file), which the CLI prints as one line instead of a traceback.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import typing
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
from dotenv import dotenv_values

from core.errors import SettingsError
from core.sentinel_url import is_sentinel_url, parse_sentinel_url

__all__ = [
    "MIN_TOKEN_CHARS",
    "Settings",
    "ignored_variables",
    "is_loopback",
    "load_settings",
    "redact_url",
    "refuse_exposed_bind",
]

#: The shortest ADMIN_TOKEN / CHECK_TOKEN accepted (``openssl rand -hex 32`` gives 64).
MIN_TOKEN_CHARS = 32
_TOKENS = ("admin_token", "check_token")
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: a header value

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")
_QUERY_PASSWORD_RE = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)

Positive = Annotated[int, msgspec.Meta(ge=1)]
Millis = Annotated[int, msgspec.Meta(ge=1, le=3_600_000)]


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """All runtime settings. Field ``x_y`` is read from the variable ``X_Y``."""

    bind_address: str = "127.0.0.1:8080"
    # Envoy's rate limit service (gRPC): host:port, or "off" (docs/envoy.md)
    rls_bind_address: str = "127.0.0.1:8081"
    rls_response_headers: Literal["ietf", "x-ratelimit", "off"] = "ietf"
    redis_url: str | None = None
    redis_cluster: bool = False
    #: Credentials of the Sentinels themselves (a redis+sentinel:// URL's are the nodes').
    redis_sentinel_username: str | None = None
    redis_sentinel_password: str | None = None
    redis_timeout_ms: Millis = 500
    redis_max_connections: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 64
    default_capacity: Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)] = 100
    default_refill_rate: Annotated[float, msgspec.Meta(gt=0, le=1_000_000_000)] = 10.0
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["json", "console"] = "json"
    key_prefix: str = "throttler"
    failure_policy: Literal["closed", "open"] = "closed"
    breaker_failures: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    breaker_cooldown_ms: Millis = 1000
    apply_wait_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 2000
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=16 * 1024 * 1024)] = 1024 * 1024
    shutdown_drain_ms: Annotated[int, msgspec.Meta(ge=0, le=600_000)] = 5000
    # The HTTP edge (throttler/http_protocol.py): what one connection may hold.
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 16 * 1024
    max_headers: Annotated[int, msgspec.Meta(ge=8, le=1000)] = 100
    http_header_timeout_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 10_000
    http_body_timeout_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 30_000
    http_keepalive_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 5_000
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096
    admin_token: str | None = None
    check_token: str | None = None
    #: Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated
    #: addresses or CIDRs; "*": any). Empty: none, the peer's address is the client's.
    trusted_proxies: str = ""
    #: Failed authentications allowed per client address per window (then 429).
    auth_failures: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10
    auth_failure_window_ms: Millis = 60_000
    #: Config changes through the API allowed per client address per window (then 429).
    mutations: Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)] = 600
    mutation_window_ms: Millis = 60_000
    #: true: start with auth that is unsafe on a network (an empty or short token, a
    #: non-loopback bind without ADMIN_TOKEN). For experiments on a trusted machine only.
    allow_insecure: bool = False
    #: Web origins allowed to call the API from a browser (comma-separated; empty: none).
    cors_origins: str = ""
    #: Host names the server answers for (comma-separated; "*": any). Empty: the loopback
    #: names when BIND_ADDRESS is loopback (against DNS rebinding), else any.
    allowed_hosts: str = ""
    #: Open notification streams (SSE + WebSocket) per process, and per client address.
    max_listeners: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000
    max_listeners_per_client: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10
    #: How often an idle notification stream (SSE) gets a keep-alive comment.
    sse_keepalive_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 15_000
    # A check may carry a limit for a key that has none (stored, with a TTL), when allowed.
    inline_limits: bool = False
    inline_limit_ttl_ms: Annotated[int, msgspec.Meta(ge=1000, le=31 * 86_400_000)] = 86_400_000
    access_log_checks: bool = False
    # Streams and workers
    stream_maxlen: Annotated[int, msgspec.Meta(ge=100)] = 1_000_000
    tombstone_ttl_ms: Annotated[int, msgspec.Meta(ge=1000)] = 7 * 24 * 3_600_000
    worker_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 200
    worker_block_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 1000
    worker_claim_idle_ms: Annotated[int, msgspec.Meta(ge=100)] = 30_000
    worker_claim_interval_ms: Annotated[int, msgspec.Meta(ge=100)] = 5_000
    worker_max_deliveries: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    worker_heartbeat_ttl_ms: Annotated[int, msgspec.Meta(ge=1000)] = 15_000
    worker_metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464
    worker_metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.key_prefix):
            raise SettingsError(
                f"KEY_PREFIX must be 1-64 characters of A-Z a-z 0-9 _ - . (got {self.key_prefix!r})"
            )
        _split_bind(self.bind_address)
        for name in _TOKENS:
            _check_token(name.upper(), getattr(self, name), self.allow_insecure)
        if self.rls_enabled:
            _split_bind(self.rls_bind_address, "RLS_BIND_ADDRESS")
        if self.redis_url is not None:
            _check_redis_url(self.redis_url)
            if self.redis_cluster and is_sentinel_url(self.redis_url):
                raise SettingsError(
                    "REDIS_CLUSTER must be false with a redis+sentinel:// REDIS_URL "
                    "(a Cluster fails over by itself; Sentinel watches a primary and replicas)"
                )

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def redis_db(self) -> int:
        """The database number of REDIS_URL (its path — after the service name for
        Sentinel — or ``?db=`` for unix://); 0 unset."""
        if not self.redis_url:
            return 0
        parts = urlsplit(self.redis_url)
        db = parts.path.strip("/") if parts.scheme != "unix" else ""
        if parts.scheme.endswith("+sentinel"):  # /<service>/<db>
            db = db.partition("/")[2]
        for pair in parts.query.split("&"):
            name, _, value = pair.partition("=")
            if name == "db":
                db = value
        return int(db) if db.isdigit() else 0

    @property
    def keyspace_args(self) -> tuple[str, int]:
        """``KeySpace(*settings.keyspace_args)``: the prefix and the database number."""
        return self.key_prefix, self.redis_db

    @property
    def host_allowlist(self) -> frozenset[str] | None:
        """The Host names answered for; None: any (see ``allowed_hosts``)."""
        names = [h.strip().lower().strip("[]") for h in self.allowed_hosts.split(",")]
        names = [h for h in names if h]
        if "*" in names:
            return None
        if names:
            return frozenset(names)
        if is_loopback(self.host):
            return _LOOPBACK_NAMES | {self.host.lower()}
        return None

    @property
    def rls_enabled(self) -> bool:
        return self.rls_bind_address.strip().lower() != "off"

    @property
    def host(self) -> str:
        return _split_bind(self.bind_address)[0]

    @property
    def port(self) -> int:
        return _split_bind(self.bind_address)[1]

    @property
    def default_limit_rate(self) -> tuple[int, int]:
        """``DEFAULT_REFILL_RATE`` tokens/s as an exact (requests, window_ms) pair."""
        frac = Fraction(str(self.default_refill_rate)).limit_denominator(1_000_000)
        requests, window_ms = frac.numerator, 1000 * frac.denominator
        # Keep the pair in range (a rate below 1/31 days is clamped to that).
        while requests > 1_000_000_000 or window_ms > 2_678_400_000:
            requests, window_ms = max(1, requests // 2), max(1, window_ms // 2)
        return requests, window_ms


def _check_token(variable: str, token: str | None, insecure: bool) -> None:
    """Refuse a token an attacker could guess or a header could not carry."""
    if token is None:
        return
    if not _TOKEN_RE.match(token):
        raise SettingsError(
            f"{variable} must be printable ASCII without spaces (a bearer token); "
            "generate one with `openssl rand -hex 32`"
        )
    if len(token) < MIN_TOKEN_CHARS and not insecure:
        raise SettingsError(
            f"{variable} must be at least {MIN_TOKEN_CHARS} characters (got {len(token)}); "
            "generate one with `openssl rand -hex 32` (ALLOW_INSECURE=true accepts it anyway)"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only listens on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve to a public address


def refuse_exposed_bind(settings: Settings) -> None:
    """A server about to listen beyond loopback without ADMIN_TOKEN would let anyone who
    reaches it change limits: refuse, unless ALLOW_INSECURE says otherwise."""
    if (
        settings.admin_token is None
        and not settings.allow_insecure
        and not is_loopback(settings.host)
    ):
        raise SettingsError(
            f"BIND_ADDRESS {settings.bind_address} is not a loopback address and ADMIN_TOKEN "
            "is not set: anyone who can reach it could change limits. Set ADMIN_TOKEN "
            "(`openssl rand -hex 32`), bind 127.0.0.1, or set ALLOW_INSECURE=true"
        )


def _check_redis_url(url: str) -> None:
    """Reject a REDIS_URL the client could not use; never echo it (it may hold a password)."""
    if is_sentinel_url(url):  # several hosts: urlsplit cannot read its port
        parse_sentinel_url(url)
        return
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise SettingsError(f"REDIS_URL is not a valid URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(
            "REDIS_URL must start with redis://, rediss://, unix://, redis+sentinel:// "
            "or rediss+sentinel://"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise SettingsError("REDIS_URL unix:// needs a socket path")
        return
    if not parts.hostname:
        raise SettingsError("REDIS_URL needs a host (redis://host:port/db)")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise SettingsError("REDIS_URL database (the path) must be a number")


_CASE_FREE = ("log_level", "log_format", "failure_policy", "rls_response_headers")


def _split_bind(bind: str, variable: str = "BIND_ADDRESS") -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        extra = ' or "off"' if variable == "RLS_BIND_ADDRESS" else ""
        raise SettingsError(f"{variable} must be HOST:PORT{extra} (got {bind!r})")
    return host.strip("[]"), int(port)


def _read(environ: dict[str, str] | None, env_file: str | Path | None) -> dict[str, str]:
    """Every variable: the .env file's, overridden by the environment's."""
    values: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    return values


def load_settings(
    environ: dict[str, str] | None = None, env_file: str | Path | None = ".env"
) -> Settings:
    """Build settings from ``environ`` (default ``os.environ``) over an optional .env file."""
    values = _read(environ, env_file)
    env = os.environ if environ is None else environ
    fields = {name.upper(): name for name in Settings.__struct_fields__}
    raw = {fields[k]: v for k, v in values.items() if k in fields and v != ""}
    # An empty token is not "no token": it would silently turn auth off.
    empty = [k for k in ("ADMIN_TOKEN", "CHECK_TOKEN") if values.get(k, None) == ""]
    for name in _CASE_FREE:  # LOG_LEVEL=INFO means info
        if name in raw:
            raw[name] = raw[name].lower()

    def origin(variable: str) -> str:
        return "the environment" if variable in env else str(env_file)

    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(str(exc), values, origin)) from None
    except SettingsError as exc:  # from __post_init__: the message starts with the variable
        variable = str(exc).split(" ", 1)[0]
        raise SettingsError(f"{exc} (from {origin(variable)})") from None
    if empty and not settings.allow_insecure:
        raise SettingsError(
            f"{empty[0]} is set but empty (from {origin(empty[0])}), which would turn its "
            "auth off: give it a token (`openssl rand -hex 32`) or remove the variable"
        )
    return settings


_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}
_BOUNDS = {">=": "at least", "<=": "at most", ">": "greater than", "<": "less than"}
_WRONG_TYPE = re.compile(r"Expected `(\w+)[^`]*`, got `\w+`")
_OUT_OF_RANGE = re.compile(r"Expected `\w+` (>=|<=|>|<) (\S+)")


def _explain(message: str, values: dict[str, str], origin: typing.Callable[[str], str]) -> str:
    """msgspec's ``Expected `int`, got `str` - at `$.x``` as a sentence for an operator:
    ``X must be an integer, got 'abc' (from .env)``."""
    text, sep, where = message.rpartition(" - at `$.")
    if not sep:
        return message
    field = where.rstrip("`")
    variable = field.upper()
    got = f"got {values.get(variable, '')!r} (from {origin(variable)})"
    if match := _WRONG_TYPE.fullmatch(text):
        return f"{variable} must be {_TYPES.get(match[1], match[1])}, {got}"
    if match := _OUT_OF_RANGE.fullmatch(text):
        return f"{variable} must be {_BOUNDS[match[1]]} {match[2]}, {got}"
    if text.startswith("Invalid enum value"):
        choices = ", ".join(typing.get_args(typing.get_type_hints(Settings)[field]))
        return f"{variable} must be one of {choices}, {got}"
    return f"{variable}: {text}, {got}"


#: Variables of the Rust service Throttler replaces that mean nothing here, and what to use.
_LEGACY = {"RUST_LOG": "LOG_LEVEL"}
#: THROTTLER_* variables the project itself sets (not settings).
_INTERNAL = frozenset({"THROTTLER_SERVE_WORKER", "THROTTLER_TEST_SERVER"})


def ignored_variables(
    environ: dict[str, str] | None = None, env_file: str | Path | None = ".env"
) -> list[str]:
    """Why each variable that looks meant for Throttler but is not a setting is ignored:
    a ``THROTTLER_*`` name (settings have no prefix), or a setting of the original service."""
    names = {name.upper() for name in Settings.__struct_fields__}
    found = []
    for variable in sorted(_read(environ, env_file)):
        if variable in _LEGACY:
            found.append(f"{variable} (the original service's; use {_LEGACY[variable]})")
        elif variable.startswith("THROTTLER_") and variable not in _INTERNAL:
            close = difflib.get_close_matches(variable.removeprefix("THROTTLER_"), names, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            found.append(f"{variable} (not a setting: settings have no THROTTLER_ prefix{hint})")
    return found


def redact_url(url: str | None) -> str | None:
    """The URL with any password replaced by ``***`` (safe to log)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if at and colon:
        # Keep the host part verbatim (brackets of an IPv6 address, port as written).
        netloc = f"{user}:***@{host}"
    # redis-py also takes the password as a query parameter: ?password=...
    query = _QUERY_PASSWORD_RE.sub(r"\1***", parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
