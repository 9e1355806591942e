"""What a browser meets: no cross-origin access unless CORS_ORIGINS says so, and a ticket in
a URL never reaches a span attribute (traces are exported: they are logs too)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.settings import load_settings
from core.telemetry import Telemetry
from throttler.cli import build_app

if TYPE_CHECKING:
    from core.settings import Settings

pytestmark = pytest.mark.anyio


async def test_no_cross_origin_access_by_default(settings: Settings) -> None:
    async with AsyncTestClient(app=build_app(settings, worker=False)) as client:
        simple = await client.get("/health", headers={"Origin": "https://page.example"})
        assert simple.status_code == 200
        assert "access-control-allow-origin" not in simple.headers
        preflight = await client.options(
            "/rate-limit/k",
            headers={"Origin": "https://page.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers


async def test_a_ticket_never_reaches_a_span(redis_url: str, prefix: str) -> None:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "ADMIN_TOKEN": "adm-0123456789abcdef0123456789abcdef",
    }
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = build_app(load_settings(env, env_file=None), worker=False, telemetry=Telemetry(provider))
    async with AsyncTestClient(app=app) as client:
        refused = await client.get("/notifications?prefix=a&ticket=t1.1.secret-part.sig")
        assert refused.status_code == 401
    provider.shutdown()
    spans = [s for s in exporter.get_finished_spans() if s.attributes]
    values = [str(v) for s in spans for v in (s.attributes or {}).values()]
    assert any("ticket=***" in v for v in values), values  # the URL was recorded, redacted
    assert not any("secret-part" in v for v in values)
