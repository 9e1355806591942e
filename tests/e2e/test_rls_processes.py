"""Envoy's rate limit service across processes and failures: exactness over two `serve`
processes on one Redis, `throttler rls` alone, Redis killed or stalled (FAILURE_POLICY
within REDIS_TIMEOUT_MS), and traces over OTLP/gRPC from the same process that serves the
RLS stubs (the OTLP exporter must still import and export beside them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent import futures
from typing import TYPE_CHECKING, Any

import anyio
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from core.embedded import free_port
from tests.support.poll import until
from tests.support.rls import OK, OVER_LIMIT, apply_domain, descriptor, request, stub, wait_loaded
from tests.support.servers import RedisProcess
from tests.support.service import ServiceProcess, running

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

TIMEOUT_MS = 500
PROMPT_S = TIMEOUT_MS / 1000 + 2.0  # the timeout, and slack for a loaded machine


def _domain(limit: int) -> dict[str, Any]:
    return {
        "domain": f"d{uuid.uuid4().hex[:10]}",
        "descriptors": [
            {"key": "client", "rate_limit": {"unit": "day", "requests_per_unit": limit}},
            {"key": "route", "rate_limit": {"unit": "day", "requests_per_unit": 10 * limit}},
        ],
    }


async def test_two_processes_admit_exactly_the_limit(redis_url: str, tmp_path: Path) -> None:
    limit, calls = 40, 160
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}"}
    ports = [free_port(), free_port()]
    procs = [
        ServiceProcess({**env, "WORKER_BLOCK_MS": "100", "RLS_BIND_ADDRESS": f"127.0.0.1:{p}"})
        for p in ports
    ]
    config = _domain(limit)
    name = config["domain"]
    with running(procs, tmp_path):
        apply_domain(config, env, tmp_path)
        for proc in procs:
            await wait_loaded(proc.base_url, name)
        answers: Counter[int] = Counter()
        both = request(name, descriptor(("client", "c1")), descriptor(("route", "r1")))
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as one,
            grpc.aio.insecure_channel(f"127.0.0.1:{ports[1]}") as two,
        ):
            stubs = [stub(one), stub(two)]

            async def call(i: int) -> None:
                answer = await stubs[i % 2].ShouldRateLimit(both, timeout=30)
                answers[answer.overall_code] += 1

            async with anyio.create_task_group() as tg:
                for i in range(calls):
                    tg.start_soon(call, i)
            # Denied requests spent nothing on `route`: it counted exactly the admitted ones.
            route = await stubs[0].ShouldRateLimit(request(name, descriptor(("route", "r1"))))
    assert answers == {OK: limit, OVER_LIMIT: calls - limit}
    assert route.statuses[0].limit_remaining == 10 * limit - limit - 1


@pytest.fixture
def own_redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGCONT)  # in case a test left it paused
        server.close()


def _service(redis: RedisProcess, prefix: str, policy: str) -> tuple[ServiceProcess, str]:
    port = free_port()
    env = {
        "REDIS_URL": redis.url,
        "KEY_PREFIX": prefix,
        "WORKER_BLOCK_MS": "100",
        "REDIS_TIMEOUT_MS": str(TIMEOUT_MS),
        "FAILURE_POLICY": policy,
        "RLS_BIND_ADDRESS": f"127.0.0.1:{port}",
    }
    return ServiceProcess(env), f"127.0.0.1:{port}"


async def _timed(client: Any, req: Any) -> tuple[Any, float]:
    began = time.monotonic()
    try:
        answer = await client.ShouldRateLimit(req, timeout=30)
    except grpc.aio.AioRpcError as exc:
        answer = exc
    return answer, time.monotonic() - began


@pytest.mark.parametrize("failure", ["killed", "stalled"])
async def test_redis_trouble_fails_closed_with_unavailable_within_the_timeout(
    own_redis_server: RedisProcess, prefix: str, tmp_path: Path, failure: str
) -> None:
    proc, address = _service(own_redis_server, prefix, "closed")
    config = _domain(5)
    name = config["domain"]
    proc.start(tmp_path)
    try:
        apply_domain(config, {"REDIS_URL": own_redis_server.url, "KEY_PREFIX": prefix}, tmp_path)
        await wait_loaded(proc.base_url, name)
        async with grpc.aio.insecure_channel(address) as channel:
            client = stub(channel)
            req = request(name, descriptor(("client", "c1")))
            assert (await client.ShouldRateLimit(req)).overall_code == OK
            assert own_redis_server.proc is not None
            if failure == "killed":
                own_redis_server.stop()
            else:
                own_redis_server.proc.send_signal(signal.SIGSTOP)
            for _ in range(3):
                answer, took = await _timed(client, req)
                assert isinstance(answer, grpc.aio.AioRpcError), answer
                assert answer.code() == grpc.StatusCode.UNAVAILABLE, answer
                assert "Redis" in (answer.details() or "")
                assert took < PROMPT_S, f"answered after {took:.2f}s"
            # A descriptor that matches nothing needs no Redis: still answered OK.
            free = request(name, descriptor(("nothing", "x")))
            assert (await client.ShouldRateLimit(free)).overall_code == OK
            if failure == "stalled":
                own_redis_server.proc.send_signal(signal.SIGCONT)

                async def recovered() -> bool:
                    answer, _ = await _timed(client, req)
                    return not isinstance(answer, grpc.aio.AioRpcError)

                await until(recovered, 30, 0.2)
    finally:
        proc.stop()


async def test_redis_killed_fails_open_with_ok(
    own_redis_server: RedisProcess, prefix: str, tmp_path: Path
) -> None:
    proc, address = _service(own_redis_server, prefix, "open")
    config = _domain(1)
    name = config["domain"]
    proc.start(tmp_path)
    try:
        apply_domain(config, {"REDIS_URL": own_redis_server.url, "KEY_PREFIX": prefix}, tmp_path)
        await wait_loaded(proc.base_url, name)
        async with grpc.aio.insecure_channel(address) as channel:
            client = stub(channel)
            req = request(name, descriptor(("client", "c1")))
            assert (await client.ShouldRateLimit(req)).overall_code == OK
            assert (await client.ShouldRateLimit(req)).overall_code == OVER_LIMIT
            own_redis_server.stop()
            answer, took = await _timed(client, req)
            assert not isinstance(answer, grpc.aio.AioRpcError), answer
            assert answer.overall_code == OK
            assert not answer.statuses[0].HasField("current_limit")
            assert took < PROMPT_S
    finally:
        proc.stop()


async def test_throttler_rls_serves_alone(redis_url: str, prefix: str, tmp_path: Path) -> None:
    """`throttler rls` (no HTTP) beside a `serve` that applies the config."""
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix}
    port = free_port()
    api = ServiceProcess({**env, "WORKER_BLOCK_MS": "100"})
    alone = ServiceProcess({**env, "RLS_BIND_ADDRESS": f"127.0.0.1:{port}"}, ["rls"])
    config = _domain(2)
    name = config["domain"]
    api.start(tmp_path)
    alone.start(tmp_path, wait=False)
    try:
        apply_domain(config, env, tmp_path)
        req = request(name, descriptor(("client", "c1")))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = stub(channel)

            async def limited() -> Any:
                try:
                    answer = await client.ShouldRateLimit(
                        request(name, descriptor(("client", "probe"))), timeout=5
                    )
                except grpc.aio.AioRpcError:
                    return None  # not listening yet
                return answer if answer.statuses[0].HasField("current_limit") else None

            await until(limited, 30, 0.1)
            codes = [(await client.ShouldRateLimit(req)).overall_code for _ in range(3)]
        assert codes == [OK, OK, OVER_LIMIT]
        alone.signal(signal.SIGTERM)
        assert alone.proc is not None
        assert alone.proc.wait(20) == 0
    finally:
        alone.stop()
        api.stop()


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: what an OpenTelemetry Collector would get."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.names += [span.name for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[_Collector, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = _Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None)


def test_otlp_grpc_exporter_imports_beside_the_rls_stubs() -> None:
    """The trap of `xds-protos` (docs/envoy.md): one interpreter loads both."""
    code = (
        "import api.rls.proto.rls_pb2, api.rls.proto.rls_pb2_grpc\n"
        "from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter\n"
        "from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as H\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr


async def test_rls_spans_reach_an_otlp_grpc_collector(
    collector: tuple[_Collector, int],
    redis_url: str,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    servicer, port = collector
    rls_port = free_port()
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "WORKER_BLOCK_MS": "100",
        "RLS_BIND_ADDRESS": f"127.0.0.1:{rls_port}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    proc = ServiceProcess(env)
    proc.start(tmp_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rls_port}") as channel:
            answer = await stub(channel).ShouldRateLimit(request("any", descriptor(("k", "v"))))
        assert answer.overall_code == OK

        async def exported() -> bool:
            return "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" in servicer.names

        await until(exported, 20, 0.1)
    finally:
        proc.stop()


async def test_a_drain_turns_grpc_health_to_not_serving_while_answers_go_on(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = free_port()
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "WORKER_BLOCK_MS": "100",
        "RLS_BIND_ADDRESS": f"127.0.0.1:{port}",
        "SHUTDOWN_DRAIN_MS": "5000",  # long enough to look inside the drain
    }
    proc = ServiceProcess(env)
    proc.start(tmp_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(
                service="envoy.service.ratelimit.v3.RateLimitService"
            )
            assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.SERVING
            proc.signal(signal.SIGTERM)

            async def not_serving() -> bool:
                reply = await health.Check(check, timeout=5)
                return bool(reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)

            await until(not_serving, 8, 0.05)
            answer = await stub(channel).ShouldRateLimit(request("d", descriptor(("k", "v"))))
            assert answer.overall_code == OK
    finally:
        proc.stop()
