"""Logs: JSON lines with level and timestamp, access lines, trace ids, and no secrets.

The end-to-end test runs ``throttler serve`` against a Redis that requires a password
(given in ``REDIS_URL``) with an ``ADMIN_TOKEN``, exports traces to a loopback OTLP
receiver, and reads the whole process output. The unit tests pin the formatter and the
redaction down on their own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, cast

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import logs
from core.keys import KeySpace
from core.logs import ConsoleFormatter, JsonFormatter, redact, register_secret
from core.streams import EVENT_FIELD, encode
from core.telemetry import Telemetry
from schemas.events import SetLimit
from schemas.limits import Limit
from tests.support.otlp import ExportedSpan, OtlpReceiver
from tests.support.servers import RedisProcess
from tests.support.service import ServiceProcess
from workers.applier import Applier

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from core.config_store import ApplyResult, ConfigStore
    from core.gateway import Gateway

PASSWORD = "s3cret-pw-XYZ"
TOKEN = "tok-SECRET-123-0123456789abcdef01234567"
KEY = "user-42.logs"


# --- unit: redaction and formatters ---------------------------------------------------


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """A fresh registry of secrets for the test (the module keeps one per process)."""
    fresh: set[str] = set()
    monkeypatch.setattr(logs, "_secrets", fresh)
    return fresh


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://user:p:w@host:6380/1 up", "rediss://user:***@host:6380/1 up"),
        ("at redis://127.0.0.1:6379/0 now", "at redis://127.0.0.1:6379/0 now"),
        # Credential headers lose their whole value, whatever the scheme or form.
        ("Authorization: Bearer abc.def-ghi", "Authorization: ***"),
        ("authorization: bearer abc", "authorization: ***"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: ***"),
        ("authorization: not-even-a-scheme", "authorization: ***"),
        ("Cookie: session=abc; theme=dark", "Cookie: ***"),
        (
            "[(b'authorization', b'Basic dXNl'), (b'host', b'h')]",
            "[(b'authorization', b'***'), (b'host', b'h')]",
        ),
        ("{'cookie': 'session=abc', 'host': 'h'}", "{'cookie': '***', 'host': 'h'}"),
        ("Proxy-Authorization: Digest x", "Proxy-Authorization: ***"),
        ("no cookie, no token", "no cookie, no token"),
        ('{"h": "Bearer abc"}', '{"h": "Bearer ***"}'),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact(text: str, expected: str, secrets: set[str]) -> None:
    assert redact(text) == expected


def test_registered_secrets_are_redacted(secrets: set[str]) -> None:
    register_secret(None)
    register_secret("")
    register_secret("hunter2-token")
    assert secrets == {"hunter2-token"}
    assert redact("token=hunter2-token&x=1") == "token=***&x=1"


def _record(
    message: str, *args: object, exc: BaseException | None = None, **extra: Any
) -> logging.LogRecord:
    record = logging.LogRecord(
        "throttler.test",
        logging.WARNING,
        __file__,
        1,
        message,
        args,
        (type(exc), exc, exc.__traceback__) if exc is not None else None,
    )
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_json_formatter_fields_and_redaction(secrets: set[str]) -> None:
    register_secret("tok-unit")
    try:
        raise RuntimeError("failed with redis://:pw-in-exc@h:1/0")
    except RuntimeError as exc:
        record = _record(
            "connect %s with %s",
            "redis://u:pw-in-msg@h:1/0",
            "tok-unit",
            exc=exc,
            route="/rate-limit/{key}",
            status=201,
            duration_ms=1.5,
            url="redis://:pw-in-extra@h/0",
            nested={"headers": ["Bearer pw-in-list"], "n": 1},
            obj=object(),  # not JSON: logged as its text, the line stays JSON
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "throttler.test"
    assert entry["message"] == "connect redis://u:***@h:1/0 with ***"
    stamp = dt.datetime.fromisoformat(entry["timestamp"])
    assert stamp.utcoffset() == dt.timedelta(0)
    assert abs(stamp.timestamp() - record.created) < 0.001
    assert (entry["route"], entry["status"], entry["duration_ms"]) == (
        "/rate-limit/{key}",
        201,
        1.5,
    )
    assert entry["url"] == "redis://:***@h/0"
    assert entry["nested"] == {"headers": ["Bearer ***"], "n": 1}
    assert entry["obj"].startswith("<object object")
    assert "RuntimeError" in entry["exception"]
    assert "pw-in" not in line
    assert "tok-unit" not in line
    assert "trace_id" not in entry  # no span is active
    for reserved in ("msg", "args", "levelname", "exc_info", "created"):
        assert reserved not in entry


def test_formatters_add_the_active_span(secrets: set[str]) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        entry = json.loads(JsonFormatter().format(_record("inside")))
        console = ConsoleFormatter().format(_record("inside Bearer tok"))
    ctx = span.get_span_context()
    assert entry["trace_id"] == f"{ctx.trace_id:032x}"
    assert entry["span_id"] == f"{ctx.span_id:016x}"
    assert console.endswith(f"inside Bearer *** trace_id={ctx.trace_id:032x}")


class _FailingStore:
    async def apply_many(
        self, changes: list[tuple[str, Limit | None, str]]
    ) -> list[ApplyResult | Exception]:
        return [RuntimeError("script failed") for _ in changes]


async def _apply_failing_entry(applier: Applier, traceparent: str) -> int:
    event = SetLimit(key=KEY, limit=Limit(requests=1, window_ms=1000), traceparent=traceparent)
    return await applier.handle([("1-0", {EVENT_FIELD.encode(): encode(event)})])


@contextlib.contextmanager
def _json_output(logger_name: str) -> Iterator[io.StringIO]:
    """What ``logger_name`` logs, formatted as it is emitted (the span is read then)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_a_stream_entry_s_error_line_carries_its_trace_id(secrets: set[str]) -> None:
    """An apply that fails is logged inside the entry's trace (no request is active)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    applier = Applier(
        cast("Gateway", None),  # not used: a failed apply leaves the entry pending, unfinished
        KeySpace("unit"),
        cast("ConfigStore", _FailingStore()),
        "c1",
        maxlen=1000,
        max_deliveries=5,
        telemetry=Telemetry(provider),
    )
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with _json_output("throttler.worker") as output:
        assert anyio.run(_apply_failing_entry, applier, parent) == 0
    [entry] = [json.loads(line) for line in output.getvalue().splitlines()]
    assert entry["message"] == "apply of 1-0 failed: script failed"
    [apply_span] = [s for s in exporter.get_finished_spans() if s.name == "apply limit change"]
    assert entry["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert entry["span_id"] == f"{apply_span.context.span_id:016x}"


# --- end to end: a real service process -----------------------------------------------


@pytest.fixture
def redis_with_password() -> Iterator[RedisProcess]:
    server = RedisProcess(extra=["--requirepass", PASSWORD])
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def _lines(text: str) -> list[dict[str, Any]]:
    """The log lines (stderr), every one JSON; `serve`'s one human line (stdout) aside."""
    entries = []
    human = [line for line in text.splitlines() if line.startswith("throttler: serving ")]
    assert len(human) <= 1, human
    for number, line in enumerate(text.splitlines(), 1):
        if line in human:
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"line {number} is not JSON ({exc}): {line!r}") from None
        assert isinstance(entry, dict), f"line {number} is not an object: {line!r}"
        entries.append(entry)
    return entries


def _wait_for_log(service: ServiceProcess, event: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while f'"event":"{event}"' not in service.log():
        assert time.monotonic() < deadline, f"no {event} line in:\n{service.log()}"
        time.sleep(0.02)


def test_service_logs_are_json_carry_trace_ids_and_no_secrets(
    redis_with_password: RedisProcess,
    receiver: OtlpReceiver,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    port = redis_with_password.port
    service = ServiceProcess(
        {
            "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{port}/0",
            "KEY_PREFIX": prefix,
            "ADMIN_TOKEN": TOKEN,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "debug",  # the most lines: every library's must be JSON and clean
            "ACCESS_LOG_CHECKS": "true",  # an access line for every request, checks too
            "WORKER_BLOCK_MS": "100",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_SERVICE_NAME": "throttler-logs",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # (method, path, body, expected status, route template in the access line)
    requests: list[tuple[str, str, bytes | None, int, str]] = [
        ("POST", f"/rate-limit/{KEY}", b'{"requests": 5, "window_ms": 60000}', 201, "{key}"),
        ("POST", f"/rate-limit/{KEY}/check", None, 200, "{key}/check"),
        ("DELETE", "/rate-limit/no-such-key", None, 404, "{key}"),
        ("POST", f"/rate-limit/{KEY}", b'{"requests": 5,', 400, "{key}"),
        ("GET", f"/no/such/route/{KEY}", None, 404, ""),
    ]
    try:
        service.start(tmp_path)
        with httpx.Client(base_url=service.base_url, headers=auth, timeout=10) as http:
            for method, path, body, status, _ in requests:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                response = http.request(method, path, content=body, headers=headers)
                assert response.status_code == status, (path, response.text)
        _wait_for_log(service, "audit")
        spans = receiver.wait_for(
            lambda s: (
                len([x for x in s if x.kind == "SERVER"]) >= len(requests)
                and any(x.name == "audit set_limit" for x in s)
            ),
            what="a server span per request and the audit span",
        )
    finally:
        service.stop()
    output = service.log()
    entries = _lines(output)

    # Every line: level and timestamp (and a message, and who logged it).
    for entry in entries:
        assert entry["level"] in {"debug", "info", "warning", "error", "critical"}, entry
        assert dt.datetime.fromisoformat(entry["timestamp"]).tzinfo is not None, entry
        assert isinstance(entry["message"], str), entry
        assert isinstance(entry["logger"], str), entry

    # One access line per request: route template, status and duration; the trace id and
    # span id of that request's server span.
    access = [e for e in entries if e.get("event") == "access"]
    assert len(access) == len(requests), access
    by_request: dict[str, dict[str, Any]] = {}
    for method, path, _, status, template in requests:
        route = f"/rate-limit/{template}" if template else "unmatched"
        [line] = [
            e for e in access if (e["method"], e["route"], e["status"]) == (method, route, status)
        ]
        assert isinstance(line["duration_ms"], float | int), line
        assert 0 <= line["duration_ms"] < 10_000
        [server] = [
            s
            for s in spans
            if s.kind == "SERVER"
            and s.attributes.get("http.target") == path
            and s.attributes.get("http.status_code") == status
        ]
        assert server.name == (f"{method} {route}" if template else method)
        assert (line.get("trace_id"), line.get("span_id")) == (server.trace_id, server.span_id)
        by_request[f"{method} {route} {status}"] = line
    assert not [e for e in access if KEY in e["route"] or KEY in e["message"]]

    # The worker's audit line is logged inside the audit span: the create request's trace.
    # (the DELETE of a key without a limit is a change too: its audit line says not_found)
    [audit_line] = [e for e in entries if e.get("event") == "audit" and e["result"] == "created"]
    [audit_span] = [s for s in spans if s.name == "audit set_limit"]
    assert (audit_line["trace_id"], audit_line["span_id"]) == (
        audit_span.trace_id,
        audit_span.span_id,
    )
    assert audit_line["trace_id"] == by_request["POST /rate-limit/{key} 201"]["trace_id"]
    assert audit_line["result"] == "created"

    # No secret anywhere: not in the output, not in an exported span.
    assert PASSWORD not in output
    assert TOKEN not in output
    assert not [s for s in spans if _mentions(s, PASSWORD) or _mentions(s, TOKEN)]
    # ...and the lines that name the Redis URL show it redacted.
    redacted = f"redis://:***@127.0.0.1:{port}/0"
    startup = [e for e in entries if e["message"].startswith("using redis at")]
    assert [e["message"] for e in startup] == [f"using redis at {redacted}"]
    assert any(e["message"] == f"api starting; redis {redacted}" for e in entries)

    # The exporter compressed its batches; the receiver read them all.
    assert receiver.posts
    assert {encoding for _, encoding in receiver.posts} == {"gzip"}
    assert receiver.errors == []


def _mentions(span: ExportedSpan, secret: str) -> bool:
    return secret in span.name or secret in json.dumps(
        [span.attributes, span.resource], default=str
    )


def test_console_formatter_cannot_be_made_to_forge_a_line(secrets: set[str]) -> None:
    """A key (or any text from a request) with a newline or an escape sequence stays on
    its record's line; a traceback's lines are indented under it."""
    forged = "k\n2026-01-01 00:00:00,000 ERROR   throttler: forged\r\x1b[2K"
    line = ConsoleFormatter().format(_record("checked %s", forged))
    assert not {"\n", "\r", "\x1b"} & set(line)
    assert "k\\n2026-01-01" in line
    assert "\\x1b[2K" in line
    try:
        raise ValueError("boom\nERROR fake")
    except ValueError as exc:
        text = ConsoleFormatter().format(_record("failed", exc=exc))
    first, *rest = text.splitlines()
    assert first.endswith("failed")
    assert rest
    assert all(r.startswith("    | ") for r in rest)


def test_json_formatter_writes_one_line_per_record(secrets: set[str]) -> None:
    """Through a real handler: multi-line messages and tracebacks stay on one line."""
    logger = logging.getLogger("throttler.test.lines")
    with _json_output(logger.name) as output:
        logger.warning("two\nlines")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    lines = output.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["two\nlines", "failed"]
    assert "ValueError: boom" in json.loads(lines[1])["exception"]
