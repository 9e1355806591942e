"""``GET /metrics`` of the whole app in-process (API + in-process worker) on a real Redis.

The exposition is parsed with prometheus-client's own parser; the tests assert that the
counters and histograms the ops kit (``otel/``) alerts on and charts really move, and that
no sample ever carries a rate-limit key (labels are bounded).
"""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from core.metrics import Metrics
from workers.runner import Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from litestar import Litestar
    from prometheus_client.samples import Sample

    from api.services import Services
    from core.settings import Settings

    Client = AsyncTestClient[Litestar]

pytestmark = pytest.mark.anyio

CHECK_ROUTE = "/rate-limit/{key}/check"
LIMIT_ROUTE = "/rate-limit/{key}"


async def scrape(client: Client) -> list[Sample]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return [s for f in text_string_to_metric_families(response.text) for s in f.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def unique_key(tag: str) -> str:
    return f"ops-{tag}-{uuid.uuid4().hex[:10]}"


async def test_checks_counter_and_latency_histogram_move(client: Client) -> None:
    key = unique_key("checks")
    created = await client.post(f"/rate-limit/{key}", json={"requests": 2, "window_ms": 60000})
    assert created.status_code == 201
    before = await scrape(client)

    codes = [(await client.post(f"/rate-limit/{key}/check")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]

    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("throttler_checks_total", algorithm="token_bucket", decision="allowed") == 2
    assert delta("throttler_checks_total", algorithm="token_bucket", decision="denied") == 1
    assert delta("throttler_check_duration_seconds_count") == 3
    assert delta("throttler_check_duration_seconds_sum") > 0
    assert delta("throttler_check_duration_seconds_bucket", le="+Inf") == 3
    # The check script is timed as a Redis call too.
    assert delta("throttler_redis_duration_seconds_count") >= 3


async def test_http_requests_are_labelled_by_route_template(client: Client) -> None:
    key = unique_key("http")
    await client.post(f"/rate-limit/{key}", json={"requests": 1, "window_ms": 60000})
    before = await scrape(client)
    assert (await client.post(f"/rate-limit/{key}/check")).status_code == 200
    assert (await client.post(f"/rate-limit/{key}/check")).status_code == 429
    assert (await client.get(f"/rate-limit/{key}")).status_code == 200
    after = await scrape(client)

    def delta(**labels: str) -> float:
        name = "throttler_http_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(route=CHECK_ROUTE, method="POST", status="200") == 1
    assert delta(route=CHECK_ROUTE, method="POST", status="429") == 1
    assert delta(route=LIMIT_ROUTE, method="GET", status="200") == 1
    duration = "throttler_http_request_duration_seconds_count"
    assert value(after, duration, route=CHECK_ROUTE, method="POST") - value(
        before, duration, route=CHECK_ROUTE, method="POST"
    ) == pytest.approx(2)


async def change_a_limit(client: Client, key: str) -> None:
    """Create, replace and delete ``key``'s limit; each answer says a worker applied it."""
    created = await client.post(f"/rate-limit/{key}", json={"requests": 5, "window_ms": 1000})
    assert created.status_code == 201  # 201, not 202: a worker applied it in time
    replaced = await client.post(f"/rate-limit/{key}", json={"requests": 6, "window_ms": 1000})
    assert replaced.status_code == 200
    deleted = await client.delete(f"/rate-limit/{key}")
    assert deleted.status_code == 200


THREE_CHANGES = {("set", "created"): 1.0, ("set", "replaced"): 1.0, ("delete", "deleted"): 1.0}


async def config_changes_since(
    before: list[Sample], read: Callable[[], Awaitable[list[Sample]]], timeout_s: float = 5
) -> dict[tuple[str, str], float]:
    """Counted changes since ``before``, once all three are in (or after ``timeout_s``).

    The worker announces a change (which answers the HTTP call) just before it acks it and
    counts it, so the counter may trail the answer by a moment.
    """
    name = "throttler_config_changes_total"
    with anyio.move_on_after(timeout_s):
        while True:
            after = await read()
            deltas = {
                pair: value(after, name, operation=pair[0], result=pair[1])
                - value(before, name, operation=pair[0], result=pair[1])
                for pair in THREE_CHANGES
            }
            if deltas == THREE_CHANGES:
                break
            await anyio.sleep(0.02)
    return deltas


async def test_stream_gauges_are_read_at_scrape_time(client: Client) -> None:
    await change_a_limit(client, unique_key("streams"))
    samples = await scrape(client)
    # The scrape reads the streams from Redis: the config stream holds the three entries.
    assert value(samples, "throttler_stream_length") >= 3
    groups = {s.labels["group"] for s in samples if s.name == "throttler_stream_pending"}
    assert groups == {"appliers", "audit"}
    assert {s.labels["group"] for s in samples if s.name == "throttler_stream_lag"} == groups
    assert value(samples, "throttler_dead_letters") == 0


async def test_config_change_counter_moves_on_a_worker_process(settings: Settings) -> None:
    """What `throttler worker` exports on its metrics port: a Worker with its own registry.

    The worker runs as a lifespan hook so that it shares the app's event loop (the test
    client drives the app from a portal; a worker in the test's loop would stall there).
    """
    metrics = Metrics()
    settings = msgspec.structs.replace(settings, worker_block_ms=100)  # a quick stop

    @asynccontextmanager
    async def worker_process(services: Services) -> AsyncIterator[None]:
        worker = Worker(services.gateway, services.keys, services.settings, metrics=metrics)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            yield
            worker.stop()

    async def exported() -> list[Sample]:
        text = generate_latest(metrics.registry).decode()
        return [s for f in text_string_to_metric_families(text) for s in f.samples]

    async with AsyncTestClient(app=create_app(settings, (worker_process,))) as api:
        before = await exported()
        await change_a_limit(api, unique_key("worker"))
        assert await config_changes_since(before, exported) == THREE_CHANGES
        api_samples = await scrape(api)
    after = await exported()
    # Refreshed on start and every third of the TTL: well within the TTL while it runs.
    age = value(after, "throttler_worker_heartbeat_age_seconds")
    assert 0 <= age < settings.worker_heartbeat_ttl_ms / 1000
    # The API's registry counted none of it: changes are counted where they are applied.
    assert value(api_samples, "throttler_config_changes_total") == 0


async def test_config_change_counter_moves_with_the_in_process_worker(client: Client) -> None:
    before = await scrape(client)
    await change_a_limit(client, unique_key("config"))
    changes = await config_changes_since(before, partial(scrape, client), timeout_s=1)
    assert changes == THREE_CHANGES


async def test_no_sample_carries_a_rate_limit_key(client: Client) -> None:
    keys = [unique_key("secret"), "tenant:42:user:alice", "user@example.com"]
    for key in keys:
        await client.post(f"/rate-limit/{key}", json={"requests": 1, "window_ms": 60000})
        for _ in range(2):
            await client.post(f"/rate-limit/{key}/check")
        await client.get(f"/rate-limit/{key}")
        await client.delete(f"/rate-limit/{key}")
    # A key with no limit (the default limit) and a rejected inline limit.
    await client.post(f"/rate-limit/{keys[0]}-default/check")
    bad = await client.post(f"/rate-limit/{keys[0]}-bad/check", json={"tokens": -1})
    assert bad.status_code == 400
    # A path no route matches is counted as "unmatched", not by its raw path.
    assert (await client.get(f"/rate-limit/{keys[0]}/nowhere")).status_code in {404, 405}

    samples = await scrape(client)
    assert samples
    for sample in samples:
        assert "key" not in sample.labels, sample
        for label_value in sample.labels.values():
            for key in keys:
                assert key not in label_value, sample
    routes = {s.labels["route"] for s in samples if s.name == "throttler_http_requests_total"}
    assert {CHECK_ROUTE, LIMIT_ROUTE, "unmatched"} <= routes
