"""Tracing primitives shared by the API and the workers.

Providers are passed in (never taken from globals in tests); with none, a no-op provider
makes every span free. ``core.otel_setup`` builds the real providers from ``OTEL_*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.context import Context

__all__ = ["Telemetry", "context_from", "current_traceparent"]

_propagator = TraceContextTextMapPropagator()


@dataclass(frozen=True)
class Telemetry:
    """The tracer provider a component reports to."""

    tracer_provider: trace.TracerProvider = field(default_factory=trace.NoOpTracerProvider)

    @property
    def tracer(self) -> trace.Tracer:
        return self.tracer_provider.get_tracer("throttler")

    @property
    def enabled(self) -> bool:
        return not isinstance(self.tracer_provider, trace.NoOpTracerProvider)

    def flush(self, timeout_ms: int = 5000) -> bool:
        """Export what is batched now; False if that did not finish within ``timeout_ms``.

        For the end of a server's lifespan: uvicorn re-raises the signal that stopped it
        after its graceful shutdown, so the provider's own atexit flush never runs.
        """
        flush = getattr(self.tracer_provider, "force_flush", None)
        return True if flush is None else bool(flush(timeout_ms))

    def shutdown(self) -> None:
        """Flush and stop exporting (a no-op provider has nothing to flush)."""
        shutdown = getattr(self.tracer_provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the active span, if any."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> Context | None:
    """A context whose parent is ``traceparent`` (None when absent or malformed)."""
    if not traceparent:
        return None
    ctx = _propagator.extract({"traceparent": traceparent})
    span = trace.get_current_span(ctx)
    return ctx if span.get_span_context().is_valid else None
