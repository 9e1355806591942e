"""Prometheus metrics (prometheus-client). Labels are bounded: never a rate-limit key.

Every metric of the service is defined here, so the ops kit (``otel/``) and its tests can
check each PromQL expression against this list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.gateway import text
from core.keys import APPLIERS, AUDITORS

if TYPE_CHECKING:
    from core.gateway import Gateway
    from core.keys import KeySpace

__all__ = ["Metrics", "record_stream_metrics"]

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class Metrics:
    """One set of metrics on one registry (tests pass their own registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.checks = Counter(
            "throttler_checks",
            "Rate-limit checks by algorithm and decision (allowed, denied, degraded_allowed, "
            "degraded_denied, rejected).",
            ["algorithm", "decision"],
            registry=r,
        )
        self.check_duration = Histogram(
            "throttler_check_duration_seconds",
            "Time to decide one check, Redis round trip included.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_duration = Histogram(
            "throttler_redis_duration_seconds",
            "Redis calls by operation.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            "throttler_redis_errors",
            "Redis calls that failed (connection, timeout) by operation.",
            ["operation"],
            registry=r,
        )
        self.degraded = Counter(
            "throttler_degraded_decisions",
            "Checks answered without Redis, by failure policy (open: allowed, closed: 503).",
            ["policy"],
            registry=r,
        )
        self.circuit_open = Gauge(
            "throttler_circuit_open",
            "Open Redis circuit breakers, one per node (calls to it fail fast); 0 if none.",
            registry=r,
        )
        self.config_changes = Counter(
            "throttler_config_changes",
            "Config stream entries processed by operation (set, delete, invalid) and result.",
            ["operation", "result"],
            registry=r,
        )
        self.stream_length = Gauge(
            "throttler_stream_length", "Entries in a stream.", ["stream"], registry=r
        )
        self.stream_pending = Gauge(
            "throttler_stream_pending",
            "Entries delivered to a consumer group but not yet acknowledged.",
            ["stream", "group"],
            registry=r,
        )
        self.stream_lag = Gauge(
            "throttler_stream_lag",
            "Entries not yet delivered to a consumer group.",
            ["stream", "group"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "throttler_dead_letters", "Entries in the dead-letter stream.", registry=r
        )
        self.heartbeat_age = Gauge(
            "throttler_worker_heartbeat_age_seconds",
            "Seconds since this process's worker last refreshed its heartbeat.",
            registry=r,
        )
        self.http_requests = Counter(
            "throttler_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "throttler_http_request_duration_seconds",
            "HTTP request duration by route template and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Envoy's rate limit service. Labels are bounded by the loaded config: a domain
        # that is not loaded is "unknown"; a descriptor is its config node, with the
        # request's value only under detailed_metric.
        self.rls_requests = Counter(
            "throttler_rls_requests",
            "ShouldRateLimit calls by answer: ok, over_limit, invalid, unavailable, degraded_open.",
            ["result"],
            registry=r,
        )
        self.rls_descriptors = Counter(
            "throttler_rls_descriptors",
            "RLS descriptors decided, by domain, config node and result: ok, over_limit, "
            "shadow_over_limit, unlimited, no_limit.",
            ["domain", "descriptor", "result"],
            registry=r,
        )
        self.rls_duration = Histogram(
            "throttler_rls_request_duration_seconds",
            "ShouldRateLimit duration (answered calls).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )


async def record_stream_metrics(gateway: Gateway, keys: KeySpace, metrics: Metrics) -> None:
    """Read stream length, pending, lag and dead letters from Redis into ``metrics``."""
    redis = gateway.client
    for stream, group in ((keys.config_stream, APPLIERS), (keys.audit_stream, AUDITORS)):
        metrics.stream_length.labels(stream).set(await gateway.call("xlen", redis.xlen, stream))
        groups: Any = await gateway.call("xinfo", redis.xinfo_groups, stream)
        for info in groups:
            if text(info["name"]) == group:
                metrics.stream_pending.labels(stream, group).set(int(info["pending"]))
                if info.get("lag") is not None:
                    metrics.stream_lag.labels(stream, group).set(int(info["lag"]))
    metrics.dead_letters.set(await gateway.call("xlen", redis.xlen, keys.dead_stream))
