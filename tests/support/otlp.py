"""An OTLP/HTTP trace receiver on loopback: what a collector would see, without one.

``POST /v1/traces`` bodies (protobuf ``ExportTraceServiceRequest``, optionally gzip) are
decoded into :class:`ExportedSpan` records. Tests point ``OTEL_EXPORTER_OTLP_ENDPOINT`` at
:attr:`OtlpReceiver.endpoint` and wait with :meth:`OtlpReceiver.wait_for_spans`.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = ["ExportedSpan", "OtlpReceiver"]

#: OTLP span kinds by their protobuf number (SPAN_KIND_SERVER -> "SERVER", ...).
KIND_NAMES: dict[int, str] = {
    number: name.removeprefix("SPAN_KIND_") for name, number in Span.SpanKind.items()
}
STATUS_NAMES: dict[int, str] = {
    number: name.removeprefix("STATUS_CODE_") for name, number in Status.StatusCode.items()
}


def _value(value: AnyValue) -> Any:
    field = value.WhichOneof("value")
    if field is None:
        return None
    if field == "array_value":
        return [_value(v) for v in value.array_value.values]
    if field == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, field)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


@dataclass(frozen=True)
class ExportedSpan:
    """One span as it arrived on the wire (ids as lowercase hex, "" for no parent)."""

    name: str
    kind: str  # "SERVER", "CLIENT", "PRODUCER", "CONSUMER", "INTERNAL"
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    status: str  # "UNSET", "OK", "ERROR"

    @property
    def service_name(self) -> str | None:
        name = self.resource.get("service.name")
        return name if isinstance(name, str) else None


def decode_request(body: bytes) -> list[ExportedSpan]:
    """The spans of one ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[ExportedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            spans.extend(
                ExportedSpan(
                    name=span.name,
                    kind=KIND_NAMES.get(span.kind, str(span.kind)),
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    attributes=_attributes(span.attributes),
                    resource=resource,
                    scope=scope_spans.scope.name,
                    status=STATUS_NAMES.get(span.status.code, str(span.status.code)),
                )
                for span in scope_spans.spans
            )
    return spans


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in {"", "identity"}:
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        encoding = self.headers.get("Content-Encoding", "")
        self.server.receiver.record_post(path, encoding)
        if path != "/v1/traces":  # only traces are expected: metrics or logs are recorded
            self._reply(404, b"", "text/plain")
            return
        try:
            spans = decode_request(_decompress(body, encoding))
        except Exception as exc:  # a malformed export is recorded, and rejected with a 400
            self.server.receiver.record_error(f"{type(exc).__name__}: {exc}")
            self._reply(400, str(exc).encode(), "text/plain")
            return
        self.server.receiver.record(spans)
        self._reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output is not the place for the receiver's access log."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OtlpReceiver


class OtlpReceiver:
    """Receives OTLP/HTTP trace exports on ``127.0.0.1:<free port>`` in a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ExportedSpan] = []
        self.errors: list[str] = []
        #: (path, Content-Encoding) of every POST, whatever its path
        self.posts: list[tuple[str, str]] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """The value for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter adds ``/v1/traces``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record_post(self, path: str, encoding: str) -> None:
        with self._lock:
            self.posts.append((path, encoding))

    def record(self, spans: list[ExportedSpan]) -> None:
        with self._lock:
            self._spans.extend(spans)

    def record_error(self, error: str) -> None:
        with self._lock:
            self.errors.append(error)

    @property
    def spans(self) -> list[ExportedSpan]:
        """A snapshot of every span received so far, in arrival order."""
        with self._lock:
            return list(self._spans)

    def wait_for(
        self,
        condition: Callable[[list[ExportedSpan]], bool],
        *,
        timeout: float = 10.0,
        what: str = "spans",
    ) -> list[ExportedSpan]:
        """Poll until ``condition(spans)`` holds; the snapshot it held for. Fails on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans
            if condition(spans):
                return spans
            if time.monotonic() >= deadline:
                names = sorted({s.name for s in spans})
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; "
                    f"received {len(spans)} spans named {names}; errors: {self.errors}"
                )
            time.sleep(0.02)

    def wait_for_spans(
        self,
        *names: str,
        timeout: float = 10.0,
        where: Callable[[ExportedSpan], bool] | None = None,
    ) -> list[ExportedSpan]:
        """Wait until a span of each name (that passes ``where``) has arrived."""

        def arrived(spans: list[ExportedSpan]) -> bool:
            seen = {s.name for s in spans if where is None or where(s)}
            return all(name in seen for name in names)

        return self.wait_for(arrived, timeout=timeout, what=f"spans named {list(names)}")
