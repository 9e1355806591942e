"""Build telemetry from the standard ``OTEL_*`` variables.

With no ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) nothing is exported
and a no-op provider makes every span free.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from core.telemetry import Telemetry

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["telemetry_from_env"]


def telemetry_from_env(default_service: str) -> Telemetry:
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return Telemetry()
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]  # noqa: PLC0415
            OTLPSpanExporter,
        )
    resource = Resource.create({"service.name": default_service}).merge(
        OTELResourceDetector().detect()
    )
    if name := os.environ.get("OTEL_SERVICE_NAME"):
        resource = resource.merge(Resource.create({"service.name": name}))
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _instrument_redis(provider)
    return Telemetry(provider)


def _instrument_redis(provider: TracerProvider) -> None:
    """Client spans for every Redis command (redis-py is patched once per process)."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: PLC0415

    instrumentor = RedisInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
