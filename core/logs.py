"""Logging: JSON lines (default) or a readable console format, level from ``LOG_LEVEL``.

Every record carries ``trace_id`` and ``span_id`` when a span is active. Secrets are
redacted from every message: Redis URL passwords, configured tokens and notification
tickets.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
from typing import Any

import msgspec

__all__ = ["configure_logging", "escape_controls", "redact", "register_secret"]


def _unencodable(value: object) -> str:
    """Extras JSON cannot represent are logged as their (redacted) text, not dropped with a
    traceback on stderr that would break the one-JSON-object-per-line output."""
    return redact(str(value))


_encoder = msgspec.json.Encoder(enc_hook=_unencodable)
_URL_PASSWORD = re.compile(r"(rediss?://[^:/@\s]*:)([^@\s]+)(@)")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"']+")
# Whole values of credential headers, however they are printed: ``Authorization: Basic x``,
# ``(b'authorization', b'Basic x')``, ``'cookie': 'a=b; c=d'``.
_CREDENTIAL_HEADER = re.compile(
    r"(?i)((?:proxy-)?authorization|(?:set-)?cookie|x-api-key)"  # the name
    r"(['\"]?\s*:\s*(?:(?-i:b)['\"]|['\"])?|['\"]\s*,\s*(?-i:b)?['\"])"  # : or ,
    r"([^'\"\r\n]*)"  # the value, up to its closing quote or the end of the line
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\r\n]")
_TICKET = re.compile(r"(ticket=)[^&\s\"']+")  # notification tickets in request lines
_secrets: set[str] = set()

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "color_message",  # uvicorn adds an ANSI-coloured copy of the message
}


def register_secret(value: str | None) -> None:
    """Never print ``value`` in a log line (tokens, passwords)."""
    if value:
        _secrets.add(value)


def redact(text: str) -> str:
    text = _URL_PASSWORD.sub(r"\1***\3", text)
    text = _CREDENTIAL_HEADER.sub(_hide_value, text)
    text = _BEARER.sub(r"\1***", text)
    text = _TICKET.sub(r"\1***", text)
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def _hide_value(match: re.Match[str]) -> str:
    return f"{match[1]}{match[2]}***" if match[3].strip() else match[0]


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters as ``\\n``, ``\\x1b``… (a newline in a
    key must not start a forged log line)."""
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], text)


def _scrub(value: Any) -> Any:
    """``value`` with every string in it redacted (extras may be nested dicts and lists)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub(v) for v in value]
    return value


def _trace_ids() -> tuple[str | None, str | None]:
    from opentelemetry import trace  # noqa: PLC0415 - cheap after the first import

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        trace_id, span_id = _trace_ids()
        if trace_id:
            entry["trace_id"], entry["span_id"] = trace_id, span_id
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = _scrub(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return _encoder.encode(entry).decode()


class ConsoleFormatter(logging.Formatter):
    """One line per record: the message's control characters escaped; a traceback's lines
    indented under it (so that nothing in a record can pass for a record of its own)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return "\n".join("    | " + line for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return "\n".join("    | " + line for line in stack_info.splitlines())

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        trace_id, _ = _trace_ids()
        return f"{line} trace_id={trace_id}" if trace_id else line


class _NoWebSocketLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith('%s - "WebSocket %s"')


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Send every logger (ours, uvicorn's, litestar's) through one formatted stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar", "granian"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the API logs its own access lines
    # uvicorn logs WebSocket upgrades on its error logger, with the query string (a ticket
    # would be in it); the API logs its own line for them (api.observability).
    error_log = logging.getLogger("uvicorn.error")
    error_log.filters[:] = [f for f in error_log.filters if not isinstance(f, _NoWebSocketLines)]
    error_log.addFilter(_NoWebSocketLines())
