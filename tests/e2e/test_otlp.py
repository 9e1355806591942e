"""Traces on the wire: a real ``throttler serve`` exporting OTLP/HTTP to a receiver on
loopback (tests/support/otlp.py), as it would to an OpenTelemetry Collector.

One config change is one trace: HTTP server span -> producer span (the ``XADD``) -> the
worker's consumer span -> "apply limit change" -> "audit set_limit", linked by parent span
ids through the ``traceparent`` carried inside the stream entries. A check has Redis client
spans under its server span. With no endpoint set, nothing is exported at all.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING

import httpx
import pytest
from redis import Redis

from core.keys import KeySpace
from core.otel_setup import telemetry_from_env
from tests.support.otlp import ExportedSpan, OtlpReceiver
from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEY = "user-7d1f.secret-key"  # must never be part of a span name
TOKEN = "tok-otlp-test-0123456789abcdef0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def _no_inherited_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The services under test see only the OTEL_* variables a test gives them."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def _service_env(redis_url: str, prefix: str, **otel: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "ADMIN_TOKEN": TOKEN,
        "WORKER_BLOCK_MS": "100",  # only makes the in-process worker stop sooner
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # batches flush fast
        **otel,
    }


def _change_and_check(service: ServiceProcess) -> None:
    with httpx.Client(base_url=service.base_url, headers=AUTH, timeout=10) as http:
        created = http.post(f"/rate-limit/{KEY}", json={"requests": 5, "window_ms": 60_000})
        assert created.status_code == 201, created.text
        checked = http.post(f"/rate-limit/{KEY}/check")
        assert checked.status_code == 200, checked.text


def _one(spans: list[ExportedSpan], name: str, **attributes: object) -> ExportedSpan:
    found = [
        s
        for s in spans
        if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, f"{len(found)} spans named {name!r} with {attributes}: {found}"
    return found[0]


def _children(spans: list[ExportedSpan], parent: ExportedSpan) -> list[ExportedSpan]:
    return [
        s for s in spans if s.trace_id == parent.trace_id and s.parent_span_id == parent.span_id
    ]


def test_a_config_change_is_one_trace_from_http_to_audit(
    receiver: OtlpReceiver, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    keys = KeySpace(prefix)
    stream = keys.config_stream
    service = ServiceProcess(
        _service_env(
            redis_url,
            prefix,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_SERVICE_NAME="throttler-test",
            OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=e2e,service.name=overridden",
        )
    )
    try:
        service.start(tmp_path)
        _change_and_check(service)

        def complete(spans: list[ExportedSpan]) -> bool:
            names = {s.name for s in spans}
            wanted = {
                "POST /rate-limit/{key}",
                f"send {stream}",
                f"process {stream}",
                "apply limit change",
                "audit set_limit",
                "POST /rate-limit/{key}/check",
            }
            if not wanted <= names:
                return False
            check = next(s for s in spans if s.name == "POST /rate-limit/{key}/check")
            return any(s.kind == "CLIENT" for s in _children(spans, check))

        spans = receiver.wait_for(complete, timeout=10, what="the config change and check")
    finally:
        service.stop()
    with Redis.from_url(redis_url) as redis:
        entries = redis.xrange(stream)
    assert len(entries) == 1
    entry_id = entries[0][0].decode()

    # The config change: one trace, each span the child of the one before.
    server = _one(spans, "POST /rate-limit/{key}", **{"http.route": "/rate-limit/{key}"})
    assert server.kind == "SERVER"
    assert server.parent_span_id == ""  # no incoming traceparent: the trace starts here
    assert server.attributes.get("http.status_code") == 201

    producer = _one(spans, f"send {stream}")
    assert producer.kind == "PRODUCER"
    assert producer.attributes["messaging.system"] == "redis"
    assert producer.attributes["messaging.destination.name"] == stream
    assert producer.attributes["messaging.message.id"] == entry_id

    consumer = _one(spans, f"process {stream}", **{"messaging.message.id": entry_id})
    assert consumer.kind == "CONSUMER"
    assert consumer.attributes["messaging.system"] == "redis"
    assert consumer.attributes["messaging.destination.name"] == stream
    assert consumer.attributes["messaging.consumer.group.name"] == "appliers"

    apply = _one(spans, "apply limit change")
    assert apply.attributes["throttler.result"] == "created"

    audit = _one(spans, "audit set_limit")
    assert audit.kind == "CONSUMER"
    assert audit.attributes["throttler.config_id"] == entry_id
    assert audit.attributes["messaging.destination.name"] == keys.audit_stream

    chain = [server, producer, consumer, apply, audit]
    assert {s.trace_id for s in chain} == {server.trace_id}
    for parent, child in itertools.pairwise(chain):
        assert child.parent_span_id == parent.span_id, (parent.name, child.name)
    assert all(s.status != "ERROR" for s in chain)

    # The XADD of the entry is a Redis client span inside the producer span.
    xadds = [s for s in _children(spans, producer) if s.name == "XADD"]
    assert len(xadds) == 1
    assert xadds[0].kind == "CLIENT"
    assert xadds[0].attributes["db.system"] == "redis"

    # The check: its own trace, with the Redis calls of the check as client spans.
    check = _one(spans, "POST /rate-limit/{key}/check")
    assert check.kind == "SERVER"
    assert check.attributes["http.route"] == "/rate-limit/{key}/check"
    assert check.trace_id != server.trace_id
    redis_calls = [s for s in _children(spans, check) if s.kind == "CLIENT"]
    assert redis_calls
    assert all(s.attributes["db.system"] == "redis" for s in redis_calls)
    # The check's script call is pipelined by the gateway, which reports it itself.
    assert all(s.scope == "throttler.gateway" for s in redis_calls)

    # Resource: OTEL_SERVICE_NAME wins over OTEL_RESOURCE_ATTRIBUTES, which is applied too.
    assert {s.service_name for s in spans} == {"throttler-test"}
    assert all(s.resource.get("deployment.environment.name") == "e2e" for s in spans)

    # The rate-limit key is in no span name, and no Redis statement (they are sanitized).
    assert not [s.name for s in spans if KEY in s.name]
    assert not [s for s in spans if KEY in str(s.attributes.get("db.statement", ""))]
    assert receiver.errors == []


def test_with_no_endpoint_nothing_is_exported(
    receiver: OtlpReceiver, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    # Every OTEL_* setting but the traces endpoint; the other signals' endpoints point at
    # the receiver, so any OTLP export at all (traces, metrics, logs) would arrive there.
    off = ServiceProcess(
        _service_env(
            redis_url,
            prefix,
            OTEL_SERVICE_NAME="throttler-off",
            OTEL_EXPORTER_OTLP_ENDPOINT="",  # empty counts as unset
            OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"{receiver.endpoint}/v1/metrics",
            OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=f"{receiver.endpoint}/v1/logs",
        )
    )
    # Then a service that does export, to the same receiver: by the time its spans have
    # arrived (it starts after the first one's traffic, and batches with the same delay),
    # anything the first one exported would have arrived as well.
    on = ServiceProcess(
        _service_env(
            redis_url,
            f"{prefix}-on",
            OTEL_SERVICE_NAME="throttler-on",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        )
    )
    try:
        off.start(tmp_path)
        _change_and_check(off)
        on.start(tmp_path)
        _change_and_check(on)
        spans = receiver.wait_for_spans("audit set_limit", "POST /rate-limit/{key}/check")
    finally:
        off.stop()
        on.stop()
    assert {s.service_name for s in spans} == {"throttler-on"}
    assert {path for path, _ in receiver.posts} == {"/v1/traces"}


def test_spans_batched_at_shutdown_are_exported_on_sigterm(
    receiver: OtlpReceiver, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    service = ServiceProcess(
        _service_env(
            redis_url,
            prefix,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_SERVICE_NAME="throttler-test",
            OTEL_BSP_SCHEDULE_DELAY="60000",  # nothing leaves before the shutdown
        )
    )
    try:
        service.start(tmp_path)
        _change_and_check(service)
    finally:
        service.stop()  # SIGTERM: a graceful shutdown exports what is batched first
    names = {s.name for s in receiver.spans}
    assert {"POST /rate-limit/{key}", "POST /rate-limit/{key}/check"} <= names


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ""},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ""},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"},
    ],
)
def test_telemetry_from_env_is_off_without_an_endpoint(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    telemetry = telemetry_from_env("throttler")
    assert not telemetry.enabled
    with telemetry.tracer.start_as_current_span("free") as span:
        assert not span.get_span_context().is_valid
    telemetry.shutdown()
