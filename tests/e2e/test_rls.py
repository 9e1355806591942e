"""Envoy's rate limit service, driven as Envoy drives it: a standard grpc client against a
running ``throttler serve``, domains published with ``throttler apply``.

The configurations are envoyproxy/ratelimit's README examples (or shaped like them); the
expected answers are the reference server's (src/config/config_impl.go GetLimit: the
request's last entry must land on a node with a limit; counters per domain + full
descriptor; src/service/ratelimit.go: unlimited answers OK with remaining 2^32-1, no match
answers OK without current_limit; shadow_mode answers OK).

Counting tests use ``day`` units: a day window ends at 00:00 UTC, far from any test run
(the few seconds a test takes would have to straddle midnight).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis import Redis

from core.embedded import free_port
from core.settings import load_settings
from tests.support.poll import until
from tests.support.rls import (
    OK,
    OVER_LIMIT,
    apply_domain,
    apply_domain_file,
    descriptor,
    request,
    stub,
    wait_loaded,
)
from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = pytest.mark.anyio

DAY_MS = 86_400_000
SECOND, MINUTE, HOUR, DAY = 1, 2, 3, 4


class Rls:
    """A running service with its RLS address, and the env to apply domains with."""

    def __init__(self, proc: ServiceProcess, address: str, env: dict[str, str], tmp: Path):
        self.proc, self.address, self.env, self.tmp = proc, address, env, tmp

    async def publish(self, config: dict[str, Any]) -> None:
        apply_domain(config, self.env, self.tmp)
        await wait_loaded(self.proc.base_url, config["domain"])


@pytest.fixture(scope="module")
def rls(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rls]:
    port = free_port()
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        "WORKER_BLOCK_MS": "100",
    }
    tmp = tmp_path_factory.mktemp("rls")
    proc = ServiceProcess({**env, "RLS_BIND_ADDRESS": f"127.0.0.1:{port}"})
    proc.start(tmp)
    try:
        yield Rls(proc, f"127.0.0.1:{port}", env, tmp)
    finally:
        proc.stop()


@pytest.fixture
async def client(rls: Rls) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(rls.address) as channel:
        yield stub(channel)


def domain_name() -> str:
    return f"d{uuid.uuid4().hex[:10]}"


def codes(response: Any) -> list[int]:
    return [s.code for s in response.statuses]


async def test_health_service_answers_serving(rls: Rls) -> None:
    async with grpc.aio.insecure_channel(rls.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.ratelimit.v3.RateLimitService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_exact_values_and_counting_per_descriptor(rls: Rls, client: Any) -> None:
    """README example 1 (mongo_cps), with day units: each exact value has its counter."""
    name = domain_name()
    await rls.publish(
        {
            "domain": name,
            "descriptors": [
                {
                    "key": "database",
                    "value": "users",
                    "rate_limit": {"unit": "day", "requests_per_unit": 3},
                },
                {
                    "key": "database",
                    "value": "default",
                    "rate_limit": {"unit": "DAY", "requests_per_unit": 2},
                },
            ],
        }
    )
    users = request(name, descriptor(("database", "users")))
    answers = [await client.ShouldRateLimit(users) for _ in range(4)]
    assert [a.overall_code for a in answers] == [OK, OK, OK, OVER_LIMIT]
    assert [a.statuses[0].limit_remaining for a in answers] == [2, 1, 0, 0]
    status = answers[0].statuses[0]
    assert (status.current_limit.requests_per_unit, status.current_limit.unit) == (3, DAY)
    assert 0 < status.duration_until_reset.ToMilliseconds() <= DAY_MS
    # The other value counts apart.
    default = await client.ShouldRateLimit(request(name, descriptor(("database", "default"))))
    assert default.overall_code == OK
    assert default.statuses[0].limit_remaining == 1


async def test_nested_descriptors_and_per_value_counters(rls: Rls, client: Any) -> None:
    """README example 2 (messaging): a key-only node keeps one counter per value; a nested
    node applies only to a request descriptor as deep as it."""
    name = domain_name()
    await rls.publish(
        {
            "domain": name,
            "descriptors": [
                {
                    "key": "message_type",
                    "value": "marketing",
                    "descriptors": [
                        {"key": "to_number", "rate_limit": {"unit": "day", "requests_per_unit": 2}}
                    ],
                },
                {"key": "to_number", "rate_limit": {"unit": "day", "requests_per_unit": 3}},
            ],
        }
    )

    def marketing(number: str) -> Any:
        return request(name, descriptor(("message_type", "marketing"), ("to_number", number)))

    first = [(await client.ShouldRateLimit(marketing("2061111111"))).overall_code for _ in range(3)]
    assert first == [OK, OK, OVER_LIMIT]
    # Another number: its own counter under the same node.
    assert (await client.ShouldRateLimit(marketing("2062222222"))).overall_code == OK
    # The same number alone: the top-level to_number node (3 a day), counted apart.
    alone = request(name, descriptor(("to_number", "2061111111")))
    answers = [await client.ShouldRateLimit(alone) for _ in range(4)]
    assert [a.overall_code for a in answers] == [OK, OK, OK, OVER_LIMIT]
    assert answers[0].statuses[0].current_limit.requests_per_unit == 3
    # message_type alone lands on a node without a limit: OK, nothing reported.
    bare = await client.ShouldRateLimit(request(name, descriptor(("message_type", "marketing"))))
    assert bare.overall_code == OK
    assert not bare.statuses[0].HasField("current_limit")
    # Deeper than the config: not limited (the reference server's rule).
    deep = request(name, descriptor(("to_number", "2061111111"), ("extra", "x")))
    deep_answer = await client.ShouldRateLimit(deep)
    assert deep_answer.overall_code == OK
    assert not deep_answer.statuses[0].HasField("current_limit")


async def test_blocked_value_wildcards_and_unknowns(rls: Rls, client: Any) -> None:
    """README example 3 (per-IP with a blocked address, requests_per_unit 0) and wildcard
    values; a descriptor or domain that matches nothing is OK without current_limit."""
    name = domain_name()
    await rls.publish(
        {
            "domain": name,
            "descriptors": [
                {"key": "remote_address", "rate_limit": {"unit": "day", "requests_per_unit": 10}},
                {
                    "key": "remote_address",
                    "value": "50.0.0.5",
                    "rate_limit": {"unit": "second", "requests_per_unit": 0},
                },
                {
                    "key": "path",
                    "value": "/api/*",
                    "rate_limit": {"unit": "day", "requests_per_unit": 1},
                },
            ],
        }
    )
    blocked = await client.ShouldRateLimit(
        request(name, descriptor(("remote_address", "50.0.0.5")))
    )
    assert blocked.overall_code == OVER_LIMIT
    assert blocked.statuses[0].current_limit.requests_per_unit == 0
    other = await client.ShouldRateLimit(request(name, descriptor(("remote_address", "50.0.0.6"))))
    assert other.overall_code == OK
    assert other.statuses[0].limit_remaining == 9
    # A wildcard matches by prefix; each value counts on its own.
    api_a = request(name, descriptor(("path", "/api/a")))
    assert codes(await client.ShouldRateLimit(api_a)) == [OK]
    assert codes(await client.ShouldRateLimit(api_a)) == [OVER_LIMIT]
    assert codes(await client.ShouldRateLimit(request(name, descriptor(("path", "/api/b"))))) == [
        OK
    ]
    elsewhere = await client.ShouldRateLimit(request(name, descriptor(("path", "/web/a"))))
    assert elsewhere.overall_code == OK
    assert not elsewhere.statuses[0].HasField("current_limit")
    unknown = await client.ShouldRateLimit(request(domain_name(), descriptor(("path", "/api/a"))))
    assert unknown.overall_code == OK
    assert not unknown.statuses[0].HasField("current_limit")


async def test_unlimited_shadow_and_units(rls: Rls, client: Any) -> None:
    name = domain_name()
    await rls.publish(
        {
            "domain": name,
            "descriptors": [
                {"key": "ldap", "rate_limit": {"unlimited": True}},
                {"key": "azure", "rate_limit": {"unit": "minute", "requests_per_unit": 100}},
                {"key": "hourly", "rate_limit": {"unit": "hour", "requests_per_unit": 100}},
                {
                    "key": "trial",
                    "shadow_mode": True,
                    "rate_limit": {"unit": "day", "requests_per_unit": 1},
                },
            ],
        }
    )
    ldap = await client.ShouldRateLimit(request(name, descriptor(("ldap", "x"))))
    assert ldap.overall_code == OK
    assert ldap.statuses[0].limit_remaining == 2**32 - 1
    assert not ldap.statuses[0].HasField("current_limit")
    for key, unit, unit_ms in (("azure", MINUTE, 60_000), ("hourly", HOUR, 3_600_000)):
        answer = await client.ShouldRateLimit(request(name, descriptor((key, "x"))))
        status = answer.statuses[0]
        assert status.current_limit.unit == unit
        assert 0 < status.duration_until_reset.ToMilliseconds() <= unit_ms
    # shadow_mode: a would-be denial is answered OK (and counted in the metrics).
    trial = request(name, descriptor(("trial", "t1")))
    answers = [await client.ShouldRateLimit(trial) for _ in range(3)]
    assert [a.overall_code for a in answers] == [OK, OK, OK]
    assert [a.statuses[0].limit_remaining for a in answers] == [0, 0, 0]
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{rls.proc.base_url}/metrics")).text
    labels = f'descriptor="trial",domain="{name}",result="shadow_over_limit"'
    assert f"throttler_rls_descriptors_total{{{labels}}} 2.0" in metrics


async def test_hits_addend_override_and_replaces(rls: Rls, client: Any) -> None:
    name = domain_name()
    await rls.publish(
        {
            "domain": name,
            "descriptors": [
                {
                    "key": "k",
                    "rate_limit": {"unit": "day", "requests_per_unit": 10, "name": "base"},
                },
                {
                    "key": "vip",
                    "rate_limit": {
                        "unit": "day",
                        "requests_per_unit": 1000,
                        "name": "vip",
                        "replaces": [{"name": "base"}],
                    },
                },
            ],
        }
    )
    # Request-level hits_addend (0 means 1); a descriptor's own hits_addend wins.
    answer = await client.ShouldRateLimit(request(name, descriptor(("k", "a")), hits=4))
    assert answer.statuses[0].limit_remaining == 6
    answer = await client.ShouldRateLimit(request(name, descriptor(("k", "a"), hits=5), hits=4))
    assert answer.statuses[0].limit_remaining == 1
    # More than is left: over, and nothing spent.
    answer = await client.ShouldRateLimit(request(name, descriptor(("k", "a")), hits=2))
    assert answer.overall_code == OVER_LIMIT
    answer = await client.ShouldRateLimit(request(name, descriptor(("k", "a"))))
    assert (answer.overall_code, answer.statuses[0].limit_remaining) == (OK, 0)
    # A request's limit override is honoured (within a known domain).
    override = request(name, descriptor(("k", "b"), override=(2, DAY)))
    answers = [await client.ShouldRateLimit(override) for _ in range(3)]
    assert [a.overall_code for a in answers] == [OK, OK, OVER_LIMIT]
    assert answers[0].statuses[0].current_limit.requests_per_unit == 2
    # `replaces`: with the vip descriptor present, the limit named base does not apply.
    both = request(name, descriptor(("k", "a")), descriptor(("vip", "a")))
    answer = await client.ShouldRateLimit(both)
    assert answer.overall_code == OK
    assert not answer.statuses[0].HasField("current_limit")
    assert answer.statuses[1].current_limit.name == "vip"


async def test_several_descriptors_one_answer_and_nothing_spent_when_over(
    rls: Rls, client: Any
) -> None:
    name = domain_name()
    await rls.publish(
        {
            "domain": name,
            "descriptors": [
                {
                    "key": "user",
                    "rate_limit": {"unit": "day", "requests_per_unit": 5, "name": "per-user"},
                },
                {"key": "tenant", "rate_limit": {"unit": "day", "requests_per_unit": 2}},
            ],
        }
    )
    both = request(name, descriptor(("user", "u1")), descriptor(("tenant", "t1")))
    answers = [await client.ShouldRateLimit(both) for _ in range(3)]
    assert [codes(a) for a in answers] == [[OK, OK], [OK, OK], [OK, OVER_LIMIT]]
    assert answers[2].overall_code == OVER_LIMIT
    # Statuses in request order; the denied request spent nothing on `user`.
    assert [a.statuses[0].limit_remaining for a in answers] == [4, 3, 3]
    headers = {h.key: h.value for h in answers[0].response_headers_to_add}
    reset_s = -(-answers[0].statuses[1].duration_until_reset.ToMilliseconds() // 1000)
    assert headers == {
        "RateLimit-Policy": '"tenant";q=2;w=86400',
        "RateLimit": f'"tenant";r=1;t={reset_s}',
    }


def evalsha_calls(redis: Redis) -> int:
    stats: Any = redis.info("commandstats")
    return sum(int(stats.get(c, {}).get("calls", 0)) for c in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_one_script_call_per_request_whatever_the_descriptors(
    rls: Rls, client: Any, redis_url: str
) -> None:
    name = domain_name()
    await rls.publish(
        {
            "domain": name,
            "descriptors": [
                {"key": f"k{i}", "rate_limit": {"unit": "day", "requests_per_unit": 9}}
                for i in range(8)
            ],
        }
    )
    many = request(name, *(descriptor((f"k{i}", "v")) for i in range(8)))
    await client.ShouldRateLimit(many)  # the script is loaded now
    redis = Redis.from_url(redis_url)
    try:
        # Other tests' processes may share this Redis: measure the smallest of a few deltas.
        deltas = []
        for _ in range(5):
            before = evalsha_calls(redis)
            answer = await client.ShouldRateLimit(many)
            deltas.append(evalsha_calls(redis) - before)
            assert codes(answer) == [OK] * 8
    finally:
        redis.close()
    assert min(deltas) == 1, deltas


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: request("", descriptor(("k", "v"))), "domain must not be empty"),
        (lambda: request("d"), "descriptors must not be empty"),
        (lambda: request("d", descriptor()), "has no entries"),
        (lambda: request("d", descriptor(("", "v"))), "empty key"),
        (lambda: request("d", descriptor(("k", "v"), hits=2**63)), "hits_addend"),
        (lambda: request("d", descriptor(("k", "v")), hits=2**32 - 1), "hits_addend"),
        (lambda: request("d", *[descriptor(("k", "v"))] * 65), "at most 64"),
        (lambda: request("d", descriptor(("k", "v" * 5000))), "longer than"),
    ],
    ids=[
        "empty-domain",
        "no-descriptors",
        "no-entries",
        "empty-key",
        "huge-hits",
        "huge-request-hits",
        "too-many",
        "long-value",
    ],
)
async def test_malformed_requests_are_invalid_argument(
    rls: Rls, client: Any, make: Any, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.ShouldRateLimit(make())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    # ... and the server goes on answering.
    assert (await client.ShouldRateLimit(request("d", descriptor(("k", "v"))))).overall_code == OK


async def test_config_change_over_the_stream_takes_effect_on_the_running_server(
    rls: Rls, client: Any
) -> None:
    name = domain_name()
    config: dict[str, Any] = {
        "domain": name,
        "descriptors": [{"key": "k", "rate_limit": {"unit": "day", "requests_per_unit": 1}}],
    }
    await rls.publish(config)
    k = request(name, descriptor(("k", "v")))
    assert codes(await client.ShouldRateLimit(k)) == [OK]
    assert codes(await client.ShouldRateLimit(k)) == [OVER_LIMIT]
    config["descriptors"][0]["rate_limit"]["requests_per_unit"] = 3
    apply_domain(config, rls.env, rls.tmp)
    # No restart, no file watching: the change arrives over the stream.
    await wait_loaded(
        rls.proc.base_url,
        name,
        lambda d: d["descriptors"][0]["rate_limit"]["requests_per_unit"] == 3,
    )
    async with httpx.AsyncClient() as http:
        domains = (await http.get(f"{rls.proc.base_url}/rls/domains")).json()
    assert name in [d["domain"] for d in domains["items"]]
    answer = await client.ShouldRateLimit(k)
    assert answer.statuses[0].current_limit.requests_per_unit == 3
    assert (answer.overall_code, answer.statuses[0].limit_remaining) == (OK, 1)  # spent kept


EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "envoy"


def _route_descriptors(envoy: dict[str, Any]) -> tuple[str, list[list[dict[str, Any]]]]:
    """The filter's domain and the route's rate_limits actions in docs' envoy.yaml."""
    listener = envoy["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    route = manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    rate_filter = manager["http_filters"][0]["typed_config"]
    return rate_filter["domain"], [r["actions"] for r in route["rate_limits"]]


def test_the_envoy_example_points_at_the_rls_defaults() -> None:
    envoy = yaml.safe_load((EXAMPLES / "envoy.yaml").read_text())
    domain, actions = _route_descriptors(envoy)
    limits = yaml.safe_load((EXAMPLES / "ratelimit.yaml").read_text())
    assert domain == limits["domain"]
    filters = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    rate_filter = filters[0]["typed_config"]["http_filters"][0]["typed_config"]
    cluster_name = rate_filter["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    [cluster] = [c for c in envoy["static_resources"]["clusters"] if c["name"] == cluster_name]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    port = endpoint["address"]["socket_address"]["port_value"]
    assert f"127.0.0.1:{port}" == load_settings({}, env_file=None).rls_bind_address
    options = cluster["typed_extension_protocol_options"]
    assert "http2_protocol_options" in str(options)  # gRPC needs HTTP/2
    health = cluster["health_checks"][0]["grpc_health_check"]["service_name"]
    assert health == "envoy.service.ratelimit.v3.RateLimitService"
    assert rate_filter["failure_mode_deny"] is True
    # Every action yields a descriptor key the limits file has.
    keys = {d["key"] for d in limits["descriptors"]}
    made = set()
    for action in actions:
        [kind] = action[0]
        made.add(
            {"remote_address": "remote_address", "header_value_match": "header_match"}.get(
                kind, action[0][kind].get("descriptor_key", "")
            )
        )
    assert made == keys


async def _window_has_left(redis_url: str, window_ms: int, left_ms: int) -> None:
    """Until the current fixed window (aligned to the epoch, by Redis' clock) has at least
    ``left_ms`` to run: a test counting in it must not straddle its end."""
    redis = Redis.from_url(redis_url)

    async def enough() -> bool:
        seconds, micros = redis.time()
        now_ms = seconds * 1000 + micros // 1000
        return window_ms - now_ms % window_ms >= left_ms

    try:
        await until(enough, window_ms / 1000 + 10, 0.2)
    finally:
        redis.close()


async def test_the_documented_domain_answers_envoys_descriptors(
    rls: Rls, client: Any, redis_url: str
) -> None:
    """docs/examples/envoy/ratelimit.yaml applied as docs/envoy.md says, asked with the
    descriptors docs/examples/envoy/envoy.yaml's route sends."""
    done = apply_domain_file(EXAMPLES / "ratelimit.yaml", rls.env)
    assert "published 1 changes" in done.stdout
    await wait_loaded(rls.proc.base_url, "edge")

    def envoy_request(address: str, api_key: str | None, path: str) -> Any:
        descriptors = [descriptor(("remote_address", address))]
        if api_key is not None:  # skip_if_absent
            descriptors.append(descriptor(("api_key", api_key)))
        if path.startswith("/admin"):
            descriptors.append(descriptor(("header_match", "admin")))
        return request("edge", *descriptors)

    answer = await client.ShouldRateLimit(envoy_request("198.51.100.1", "k1", "/"))
    assert codes(answer) == [OK, OK]
    assert answer.statuses[1].current_limit.name == "per-api-key"
    headers = {h.key: h.value for h in answer.response_headers_to_add}
    assert headers["RateLimit-Policy"] == '"per-api-key";q=20;w=1'
    blocked = await client.ShouldRateLimit(envoy_request("203.0.113.7", None, "/"))
    assert blocked.overall_code == OVER_LIMIT
    unlimited = await client.ShouldRateLimit(envoy_request("198.51.100.1", "internal-batch", "/"))
    assert unlimited.statuses[1].limit_remaining == 2**32 - 1
    await _window_has_left(redis_url, 30_000, 15_000)  # the admin limit: 10 per 30 s
    admin = [
        await client.ShouldRateLimit(envoy_request(f"198.51.100.{i}", None, "/admin/x"))
        for i in range(11)
    ]
    assert [a.overall_code for a in admin] == [OK] * 10 + [OVER_LIMIT]
