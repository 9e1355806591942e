"""``throttler`` — serve the API, run workers, publish limits.

Settings come from the environment (see ``throttler serve --help``); command-line options
override them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import sys
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from core.errors import RedisUnavailableError, SettingsError, StreamExhaustedError
from core.logs import configure_logging, redact, register_secret
from core.settings import (
    Settings,
    ignored_variables,
    is_loopback,
    load_settings,
    redact_url,
    refuse_exposed_bind,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from litestar import Litestar

    from api.drain import Drain
    from core.telemetry import Telemetry

__all__ = ["app_factory", "build_app", "main"]

_log = logging.getLogger("throttler")
_SERVE_WORKER = "THROTTLER_SERVE_WORKER"  # set by `serve` for its server processes

SETTINGS_HELP = """\
environment (a .env file in the working directory is read too; README.md lists all):
  BIND_ADDRESS         host:port to listen on (default 127.0.0.1:8080)
  RLS_BIND_ADDRESS     host:port of Envoy's rate limit service, gRPC (default
                       127.0.0.1:8081); off: not served
  RLS_RESPONSE_HEADERS headers RLS answers ask Envoy to add: ietf (RateLimit-Policy,
                       RateLimit; default), x-ratelimit (X-RateLimit-*), off
  REDIS_URL            redis://[user:password@]host:port/db, rediss:// for TLS; unset:
                       start an embedded server on loopback (serve only); a primary
                       watched by Sentinel: redis+sentinel://[user:password@]
                       sentinel1:26379,sentinel2:26379/<service>/<db>
  REDIS_SENTINEL_PASSWORD  the Sentinels' own password (REDIS_SENTINEL_USERNAME: user)
  REDIS_CLUSTER        true to talk to a Redis Cluster (default false)
  REDIS_TIMEOUT_MS     timeout of every Redis call (default 500)
  REDIS_MAX_CONNECTIONS  connections per process (default 64)
  DEFAULT_CAPACITY     burst of the default limit (default 100)
  DEFAULT_REFILL_RATE  tokens per second of the default limit (default 10)
  KEY_PREFIX           prefix of every Redis key (default throttler)
  FAILURE_POLICY       closed (503 when Redis cannot answer) or open (allow, marked)
  BREAKER_FAILURES     consecutive Redis failures that open the circuit (default 5)
  BREAKER_COOLDOWN_MS  how long the circuit stays open before a probe (default 1000)
  ADMIN_TOKEN          bearer token for limit CRUD, dead letters, notifications; at
                       least 32 characters; required to bind a non-loopback address
  CHECK_TOKEN          bearer token for checks, at least 32 characters (unset: open)
  ALLOW_INSECURE       true: accept short tokens and a non-loopback bind without
                       ADMIN_TOKEN (experiments only; default false)
  CORS_ORIGINS         web origins allowed to call the API from a browser (comma-separated)
  AUTH_FAILURES        wrong tokens per client address per AUTH_FAILURE_WINDOW_MS
                       (default 10 per 60000); then 429 for that address
  MUTATIONS            config changes per client address per MUTATION_WINDOW_MS
                       (default 600 per 60000); then 429
  MAX_LISTENERS        notification streams per process (1000), and per client address
                       (MAX_LISTENERS_PER_CLIENT, 10)
  TRUSTED_PROXIES      proxies whose X-Forwarded-For is believed (addresses or CIDRs,
                       comma-separated; default none)
  ALLOWED_HOSTS        Host names answered for (comma-separated, * any); default: the
                       loopback names on a loopback bind, else any
  INLINE_LIMITS        true: a check may create a limit for a key that has none (false)
  INLINE_LIMIT_TTL_MS  an inline limit expires this long after its last spend (86400000)
  ACCESS_LOG_CHECKS    true: an access-log line for every check too (default false)
  MAX_BODY_BYTES       larger request bodies get 413 (default 1048576)
  MAX_HEADER_BYTES     request line + headers; more gets 431 (default 16384)
  MAX_HEADERS          header lines per request; more gets 431 (default 100)
  HTTP_HEADER_TIMEOUT_MS  a request head must arrive within this (408; default 10000)
  HTTP_BODY_TIMEOUT_MS    a request body must arrive within this (default 30000)
  HTTP_KEEPALIVE_MS    idle keep-alive connections close after this (default 5000)
  MAX_CONNECTIONS      open connections and requests per process; beyond: 503 (4096)
  LOG_LEVEL            debug, info, warning, error, critical (default info)
  LOG_FORMAT           json or console (default json)
  APPLY_WAIT_MS        how long a config change waits to be applied (default 2000)
  SHUTDOWN_DRAIN_MS    on SIGTERM, keep serving this long with /ready answering 503
                       before the listener closes (serve; default 5000)
  OTEL_EXPORTER_OTLP_ENDPOINT and other OTEL_* variables: tracing (off when unset)
"""


WORKER_HELP = (
    SETTINGS_HELP
    + """\
worker settings:
  WORKER_BATCH              entries per read (default 200)
  WORKER_CLAIM_IDLE_MS      reclaim entries pending this long from dead consumers (30000)
  WORKER_MAX_DELIVERIES     dead-letter an entry delivered more often (default 5)
  WORKER_HEARTBEAT_TTL_MS   heartbeat lifetime; refreshed every third of it (15000)
  STREAM_MAXLEN             approximate retention of the config/audit/dead streams
"""
)


_REDIS_URL_HELP = (
    "Redis to use (REDIS_URL), without a password: anyone on the machine can read a "
    "command line (ps); give a URL with a password in REDIS_URL (environment or .env file)"
)


def _no_secret_in_argv(url: str | None) -> None:
    """Refuse ``--redis-url`` with a password: the command line is visible in ``ps``."""
    if url is not None and redact_url(url) != url:
        raise SettingsError(
            "--redis-url must not hold a password (the command line is visible to every "
            "user of the machine in `ps`): set REDIS_URL in the environment or the .env "
            "file instead"
        )


def _load(overrides: dict[str, str | None]) -> Settings:
    _no_secret_in_argv(overrides.get("REDIS_URL"))
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = value
    settings = load_settings()
    register_secret(settings.admin_token)
    register_secret(settings.check_token)
    return settings


def _configure(settings: Settings) -> None:
    """Logging as the settings say; then one warning about variables that are ignored."""
    configure_logging(settings.log_level, settings.log_format)
    if ignored := ignored_variables():
        _log.warning("ignoring environment variables: %s", "; ".join(ignored))


def build_app(
    settings: Settings,
    *,
    worker: bool = True,
    telemetry: Telemetry | None = None,
    drain: Drain | None = None,
    check_host: bool = False,
    rls: bool = False,
) -> Litestar:
    """The API wired with what runs beside it in one process: the in-process worker, and
    with ``rls`` Envoy's rate limit service on RLS_BIND_ADDRESS (unless that is off);
    ``check_host`` as in :func:`api.app.create_app` (servers pass True)."""
    from api.app import Hook, create_app  # noqa: PLC0415 - keep `throttler --help` fast
    from api.rls.server import rls_hook  # noqa: PLC0415
    from throttler.worker_cmd import in_process_worker  # noqa: PLC0415

    hooks: tuple[Hook, ...] = (in_process_worker,) if worker else ()
    if rls and settings.rls_enabled:
        hooks = (*hooks, rls_hook)
    return create_app(settings, hooks, telemetry, drain=drain, check_host=check_host)


def app_factory(drain: Drain | None = None) -> Litestar:
    """Build the app inside a server process (once per process of `serve --workers N`;
    other ASGI servers can call it too, e.g. `granian --factory throttler.cli:app_factory`)."""
    from core.otel_setup import telemetry_from_env  # noqa: PLC0415

    settings = load_settings()
    # `serve --workers N` calls this in fresh processes, where `_load` never ran.
    register_secret(settings.admin_token)
    register_secret(settings.check_token)
    configure_logging(settings.log_level, settings.log_format)
    worker = os.environ.get(_SERVE_WORKER, "1") == "1"
    telemetry = telemetry_from_env("throttler")
    return build_app(
        settings, worker=worker, telemetry=telemetry, drain=drain, check_host=True, rls=True
    )


@dataclass(frozen=True)
class ServerOptions:
    """What each server process of `serve` needs besides the environment (picklable)."""

    host: str
    port: int
    grace_s: float
    drain_s: float


def run_server(options: ServerOptions, sockets: list[socket.socket] | None = None) -> None:
    """One server process: the app on uvicorn, drained on SIGTERM (``throttler.server``)."""
    import uvicorn  # noqa: PLC0415

    from api.drain import Drain  # noqa: PLC0415
    from throttler.http_protocol import EdgeLimits, guarded_protocol  # noqa: PLC0415
    from throttler.server import DrainingServer  # noqa: PLC0415

    drain = Drain()
    settings = load_settings()
    config = uvicorn.Config(
        app_factory(drain),
        host=options.host,
        port=options.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(options.grace_s),
        server_header=False,
        http=guarded_protocol(EdgeLimits.of(settings)),
        timeout_keep_alive=settings.http_keepalive_ms / 1000,  # type: ignore[arg-type]
        limit_concurrency=settings.max_connections,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: only TRUSTED_PROXIES.
        proxy_headers=bool(settings.trusted_proxies.strip()),
        forwarded_allow_ips=settings.trusted_proxies.strip() or None,
    )
    DrainingServer(config, drain, options.drain_s).run(sockets)


def _serve(args: argparse.Namespace) -> int:
    from core.embedded import EmbeddedRedis  # noqa: PLC0415
    from throttler.server import exit_quietly  # noqa: PLC0415

    settings = _load({"BIND_ADDRESS": args.bind, "REDIS_URL": args.redis_url})
    _configure(settings)
    os.environ[_SERVE_WORKER] = "0" if args.no_worker else "1"
    refuse_exposed_bind(settings)
    if not is_loopback(settings.host) and not settings.admin_token:  # ALLOW_INSECURE said so
        _log.warning(
            "binding %s without ADMIN_TOKEN (ALLOW_INSECURE=true): anyone who can reach it "
            "can change limits",
            settings.bind_address,
        )
    # Until the server handles SIGTERM itself, exit through the finally below (which stops
    # the embedded server) rather than die at once.
    signal.signal(signal.SIGTERM, exit_quietly)
    embedded = None
    code = 0
    if settings.redis_url is None:
        embedded = EmbeddedRedis().start()
        register_secret(embedded.password)
        os.environ["REDIS_URL"] = embedded.url
        _log.info(
            "REDIS_URL is not set: started an embedded %s at %s (nothing is kept on disk)",
            embedded.name,
            embedded.url,
        )
        redis = f"{embedded.url} (embedded {embedded.name}: not persisted, gone when this stops)"
    else:
        _log.info("using redis at %s", redact_url(settings.redis_url))
        redis = str(redact_url(settings.redis_url))
    # One line for the person who typed `make run`: where everything is (logs are JSON).
    base = f"http://{settings.bind_address}"
    print(f"throttler: serving {base} (docs {base}/schema); redis {redis}", flush=True)
    options = ServerOptions(
        settings.host, settings.port, args.grace, settings.shutdown_drain_ms / 1000
    )
    try:
        if args.workers > 1:
            code = _serve_processes(options, args.workers)
        else:
            run_server(options)
    finally:
        if embedded is not None:
            embedded.stop()
            _log.info("embedded redis stopped")
    return code


_REDIS_HINT = (
    "REDIS_URL must be set for this command (or --redis-url): the Redis that `throttler serve` "
    "uses; `make run` / `throttler serve` print it at start, e.g. redis://127.0.0.1:6379/0"
)


def _needs_redis(args: argparse.Namespace) -> Settings:
    settings = _load({"REDIS_URL": getattr(args, "redis_url", None)})
    _configure(settings)
    if settings.redis_url is None:
        raise SettingsError(_REDIS_HINT)
    return settings


def _worker(args: argparse.Namespace) -> int:
    from throttler.worker_cmd import check_worker, run_worker  # noqa: PLC0415

    settings = _needs_redis(args)
    if args.check:
        return anyio.run(check_worker, settings, args.consumer)
    from core.otel_setup import telemetry_from_env  # noqa: PLC0415

    telemetry = telemetry_from_env("throttler-worker")
    try:
        return anyio.run(run_worker, settings, args.consumer or "", telemetry)
    finally:
        telemetry.shutdown()


def _rls(args: argparse.Namespace) -> int:
    from core.otel_setup import telemetry_from_env  # noqa: PLC0415
    from throttler.rls_cmd import run_rls  # noqa: PLC0415

    settings = _load({"RLS_BIND_ADDRESS": args.bind, "REDIS_URL": args.redis_url})
    _configure(settings)
    if settings.redis_url is None:
        raise SettingsError(_REDIS_HINT)
    telemetry = telemetry_from_env("throttler-rls")
    try:
        return anyio.run(run_rls, settings, telemetry, backend_options={"use_uvloop": True})
    finally:
        telemetry.shutdown()


def _apply(args: argparse.Namespace) -> int:
    from core.bulk import BulkFileError, parse_bulk_text  # noqa: PLC0415
    from throttler.rls_file import looks_like_envoy, parse_envoy_text, read_text  # noqa: PLC0415

    # The file is validated first, without Redis: `--check` needs none at all.
    changes: Sequence[Any]
    try:
        name = "<stdin>" if args.file == "-" else args.file
        text = sys.stdin.read() if args.file == "-" else read_text(args.file)
        envoy = args.format == "envoy" or (args.format == "auto" and looks_like_envoy(text))
        changes = parse_envoy_text(text, name) if envoy else parse_bulk_text(text, name)
    except BulkFileError as exc:
        for problem in exc.problems:
            print(f"throttler apply: {problem}", file=sys.stderr)
        count = len(exc.problems)
        noun = "problem" if count == 1 else "problems"
        outcome = "the file is not valid" if args.check else "nothing was sent"
        print(f"throttler apply: {count} {noun}; {outcome}", file=sys.stderr)
        return 2
    if args.check:
        what = f"{len(changes)} Envoy RLS domains" if envoy else f"{len(changes)} changes"
        print(f"{args.file}: {what}, all valid (nothing was sent)")
        return 0
    from throttler.bulk_cmd import apply_changes  # noqa: PLC0415

    settings = _needs_redis(args)
    return anyio.run(
        partial(
            apply_changes,
            settings,
            changes,
            actor=args.actor,
            batch=max(1, args.batch),
            wait=args.wait,
            timeout_s=args.timeout,
        )
    )


def _schema(_: argparse.Namespace) -> int:
    print(schema_text(), end="")
    return 0


def schema_text() -> str:
    """The JSON Schema of config events, as kept in docs/config-event.schema.json."""
    from schemas.events import config_event_schema  # noqa: PLC0415

    return json.dumps(config_event_schema(), indent=2, sort_keys=True) + "\n"


def _dead_list(args: argparse.Namespace) -> int:
    from throttler.dead_letters_cmd import list_dead_letters  # noqa: PLC0415

    return anyio.run(list_dead_letters, _needs_redis(args), args.count)


def _dead_replay(args: argparse.Namespace) -> int:
    from throttler.dead_letters_cmd import replay_dead_letters  # noqa: PLC0415

    if not args.ids and not args.all:
        raise SettingsError("give dead-letter ids to replay, or --all")
    return anyio.run(replay_dead_letters, _needs_redis(args), args.ids, args.all)


def _serve_processes(options: ServerOptions, count: int) -> int:
    """``count`` server processes sharing one listening socket (``throttler.processes``).

    The socket is made with protocol IPPROTO_TCP, not 0 as uvicorn's ``bind_socket`` does:
    accepted sockets inherit it, and asyncio enables TCP_NODELAY only for IPPROTO_TCP, so
    every keep-alive answer would otherwise wait ~40 ms for the client's delayed ACK
    (uvicorn issue #3149; measured in docs/performance.md).
    """
    from api.rls.server import REUSEPORT_ENV  # noqa: PLC0415
    from throttler.processes import STARTUP_FAILURE, run_processes  # noqa: PLC0415

    os.environ[REUSEPORT_ENV] = "1"  # the processes share RLS_BIND_ADDRESS too

    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as bound:
        bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            bound.bind((options.host, options.port))
        except OSError as exc:
            _log.error("cannot listen on %s:%d: %s", options.host, options.port, exc.strerror)
            return STARTUP_FAILURE
        bound.set_inheritable(True)
        _log.info(
            "listening on http://%s:%d with %d server processes", options.host, options.port, count
        )
        return run_processes(partial(run_server, options), count, [bound])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="throttler",
        description="Throttler: distributed rate limiting on Redis.",
        epilog=SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the HTTP API (and Envoy's rate limit service, gRPC)",
        description="Run the HTTP API, and beside it Envoy's rate limit service (gRPC) on "
        "RLS_BIND_ADDRESS unless that is off (docs/envoy.md). With no REDIS_URL, start an"
        " embedded Redis-compatible server on loopback (nothing kept on disk) and stop it"
        " on exit. The first line on standard output says where the API, its docs and its"
        " Redis are. SIGTERM drains first: for SHUTDOWN_DRAIN_MS /ready answers 503 (and "
        "gRPC health NOT_SERVING), answers close their connections and notification "
        "streams end, while new requests are still served; then the listener closes "
        "without resetting accepted connections, in-flight requests complete, the in-"
        "process worker stops, then the embedded server; exit status 0. SIGINT (Ctrl-C) "
        "does the same without the wait; a second signal ends the drain at once.",
        epilog=SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--bind", metavar="HOST:PORT", help="listen address (BIND_ADDRESS)")
    serve.add_argument("--redis-url", metavar="URL", help=_REDIS_URL_HELP)
    serve.add_argument(
        "--workers", type=int, default=1, metavar="N", help="server processes (default 1)"
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait for in-flight requests after the drain (default 30)",
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="do not run a config worker in the server process (run `throttler worker`)",
    )
    serve.set_defaults(run=_serve)

    worker = sub.add_parser(
        "worker",
        help="apply config changes from the stream (consumer-group worker)",
        description="Run the 'appliers' and 'audit' consumer groups until SIGTERM/SIGINT "
        "(the batch in hand is finished and acked first). Any number of workers can run "
        "side by side. With --check: exit 0 if a worker on this host (or --consumer) has a "
        "live heartbeat, 1 otherwise (for liveness probes).",
        epilog=WORKER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("--consumer", metavar="NAME", help="consumer name (default host-pid)")
    worker.add_argument("--check", action="store_true", help="probe the heartbeat and exit")
    worker.add_argument("--redis-url", metavar="URL", help=_REDIS_URL_HELP)
    worker.set_defaults(run=_worker)

    rls = sub.add_parser(
        "rls",
        help="serve Envoy's rate limit service (gRPC) alone, without the HTTP API",
        description="Serve envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit and "
        "grpc.health.v1 on RLS_BIND_ADDRESS until SIGTERM/SIGINT (`serve` runs the same "
        "server beside HTTP). Domains come from `throttler apply FILE` (envoyproxy/ratelimit "
        "YAML) through a worker: run `throttler worker` (or a `serve`) on the same Redis. "
        "See docs/envoy.md.",
        epilog=SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rls.add_argument("--bind", metavar="HOST:PORT", help="gRPC listen address (RLS_BIND_ADDRESS)")
    rls.add_argument("--redis-url", metavar="URL", help="Redis to use (REDIS_URL)")
    rls.set_defaults(run=_rls)

    apply = sub.add_parser(
        "apply",
        help="publish a YAML/JSON file of limits (and deletions)",
        description="Validate every item of FILE first (every bad item is reported with its "
        "line, and nothing is sent), then publish the changes on the config stream in "
        "pipelined batches. Items: {key, requests, window_ms[, algorithm][, burst]} or "
        "{key, delete: true}; a file may change each key only once. An envoyproxy/ratelimit "
        "config (a mapping with `domain` and `descriptors`; several domains as YAML "
        "documents) is detected and published as Envoy RLS domains (docs/envoy.md). "
        "Exit codes: 0 done, 1 Redis unreachable or (--wait) not all applied, 2 invalid file "
        "or settings.",
    )
    apply.add_argument("file", metavar="FILE", help="the file, or - to read standard input")
    apply.add_argument(
        "--check", action="store_true", help="validate FILE only; needs no Redis, sends nothing"
    )
    apply.add_argument(
        "--format",
        choices=["auto", "throttler", "envoy"],
        default="auto",
        help="the file's format: a Throttler bulk file, an envoyproxy/ratelimit config, or "
        "auto (default): envoy when the file is a mapping with `domain`",
    )
    apply.add_argument("--wait", action="store_true", help="wait until all are applied")
    apply.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="--wait limit (default 120)"
    )
    apply.add_argument("--batch", type=int, default=1000, metavar="N", help="per round trip")
    apply.add_argument("--actor", default="cli:apply", help="recorded in the audit trail")
    apply.add_argument("--redis-url", metavar="URL", help=_REDIS_URL_HELP)
    apply.set_defaults(run=_apply)

    schema = sub.add_parser("schema", help="print the JSON Schema of config stream events (docs/)")
    schema.set_defaults(run=_schema)

    dead = sub.add_parser("dead-letters", help="list or replay dead-lettered config entries")
    dead_sub = dead.add_subparsers(dest="action", metavar="ACTION", required=True)
    dead_list = dead_sub.add_parser(
        "list", help="print the oldest dead letters as one JSON array, as GET /dead-letters"
    )
    dead_list.add_argument("--count", type=int, default=100, metavar="N")
    dead_list.add_argument("--redis-url", metavar="URL", help=_REDIS_URL_HELP)
    dead_list.set_defaults(run=_dead_list)
    dead_replay = dead_sub.add_parser(
        "replay", help="publish dead letters again as new config entries"
    )
    dead_replay.add_argument("ids", nargs="*", metavar="ID", help="dead-letter entry ids")
    dead_replay.add_argument("--all", action="store_true", help="replay every dead letter")
    dead_replay.add_argument("--redis-url", metavar="URL", help=_REDIS_URL_HELP)
    dead_replay.set_defaults(run=_dead_replay)
    return parser


def _unreachable(exc: Exception) -> bool:
    """True for "Redis did not answer", wrapped or straight from the driver."""
    if isinstance(exc, RedisUnavailableError):
        return True
    from core.gateway import is_unavailable  # noqa: PLC0415 - redis is loaded by now

    return is_unavailable(exc)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except SettingsError as exc:
        print(f"throttler: configuration error: {exc}", file=sys.stderr)
        return 2
    except StreamExhaustedError as exc:
        print(
            f"throttler: {exc}: the config stream takes no new entries; see "
            "docs/operations.md, 'Config stream exhausted'",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _unreachable(exc):
            raise
        url = redact_url(os.environ.get("REDIS_URL"))
        print(f"throttler: cannot reach Redis at {url}: {redact(str(exc))}", file=sys.stderr)
        return 1
