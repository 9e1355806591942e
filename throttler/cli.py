"""``throttler`` — serve the API, run workers, publish limits.

Settings come from the environment (see ``throttler serve --help``); command-line options
override them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from core.errors import SettingsError
from core.logs import configure_logging, register_secret
from core.settings import Settings, load_settings, redact_url

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from litestar import Litestar

__all__ = ["app_factory", "build_app", "main"]

_log = logging.getLogger("throttler")

SETTINGS_HELP = """\
environment (a .env file in the working directory is read too):
  BIND_ADDRESS         host:port to listen on (default 127.0.0.1:8080)
  REDIS_URL            redis://[user:password@]host:port/db, rediss:// for TLS; unset:
                       start an embedded server on loopback (serve only)
  REDIS_CLUSTER        true to talk to a Redis Cluster (default false)
  REDIS_TIMEOUT_MS     timeout of every Redis call (default 500)
  DEFAULT_CAPACITY     burst of the default limit (default 100)
  DEFAULT_REFILL_RATE  tokens per second of the default limit (default 10)
  KEY_PREFIX           prefix of every Redis key (default throttler)
  LOG_LEVEL            debug, info, warning, error (default info)
  LOG_FORMAT           json or console (default json)
  APPLY_WAIT_MS        how long a config change waits to be applied (default 2000)
"""


def _load(overrides: dict[str, str | None]) -> Settings:
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = value
    settings = load_settings()
    register_secret(settings.admin_token)
    register_secret(settings.check_token)
    return settings


def build_app(settings: Settings) -> Litestar:
    """The API wired with what runs beside it in one process."""
    from api.app import create_app  # noqa: PLC0415 - keep `throttler --help` fast

    return create_app(settings)


def app_factory() -> Litestar:
    """Build the app inside a server process (uvicorn calls this, once per worker)."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return build_app(settings)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415

    from core.embedded import EmbeddedRedis  # noqa: PLC0415

    settings = _load({"BIND_ADDRESS": args.bind, "REDIS_URL": args.redis_url})
    configure_logging(settings.log_level, settings.log_format)
    embedded = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis().start()
        os.environ["REDIS_URL"] = embedded.url
        _log.info(
            "REDIS_URL is not set: started an embedded %s at %s (nothing is kept on disk)",
            embedded.name,
            embedded.url,
        )
    else:
        _log.info("using redis at %s", redact_url(settings.redis_url))
    try:
        uvicorn.run(
            "throttler.cli:app_factory",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=args.workers,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=args.grace,
            server_header=False,
        )
    finally:
        if embedded is not None:
            embedded.stop()
            _log.info("embedded redis stopped")
    return 0


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
        help="run the HTTP API",
        description="Run the HTTP API. With no REDIS_URL, start an embedded Redis-compatible "
        "server on loopback and stop it on exit. SIGTERM/SIGINT shut down gracefully: "
        "in-flight requests complete.",
        epilog=SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--bind", metavar="HOST:PORT", help="listen address (BIND_ADDRESS)")
    serve.add_argument("--redis-url", metavar="URL", help="Redis to use (REDIS_URL)")
    serve.add_argument(
        "--workers", type=int, default=1, metavar="N", help="server processes (default 1)"
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait for in-flight requests at shutdown (default 30)",
    )
    serve.set_defaults(run=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except SettingsError as exc:
        print(f"throttler: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
