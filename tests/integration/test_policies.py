"""Policies and keys with several limits, through the whole app in-process on a real Redis:
resolution order, every limit holding with nothing spent on a denial, shadow mode, reset,
listing with cursors, status of any key, propagation to another process (with and without
its notification), and hostile policy bodies."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from core.config_store import ConfigStore
from core.keys import KeySpace
from core.limiter import Limiter
from core.policies import PolicyTable, Resolved
from core.settings import Settings, load_settings
from schemas.events import AuditEvent
from schemas.limits import Limit, Policy
from tests.support.poll import until
from throttler.cli import build_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from litestar import Litestar
    from redis.asyncio import Redis

    from core.gateway import Gateway

    Client = AsyncTestClient[Litestar]

pytestmark = pytest.mark.anyio

HOUR, DAY = 3_600_000, 86_400_000


def _settings(redis_url: str, prefix: str) -> Settings:
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "APPLY_WAIT_MS": "5000"}
    return load_settings({**env, "WORKER_BLOCK_MS": "50"}, env_file=None)


@asynccontextmanager
async def app_client(settings: Settings, *, worker: bool = True) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=build_app(settings, worker=worker)) as client:
        yield client


@pytest.fixture
async def client(redis_url: str, prefix: str) -> AsyncIterator[Client]:
    async with app_client(_settings(redis_url, prefix)) as test_client:
        yield test_client


def limit(requests: int, window_ms: int, algorithm: str = "token_bucket") -> dict[str, Any]:
    return {"requests": requests, "window_ms": window_ms, "algorithm": algorithm}


async def put_policy(client: Client, name: str, status: int = 201, **body: Any) -> Any:
    resp = await client.put(f"/policies/{name}", json=body)
    assert resp.status_code == status, resp.text
    return resp.json()


async def status_of(client: Client, key: str) -> dict[str, Any]:
    resp = await client.get(f"/rate-limit/{key}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_two_limits_both_hold_and_a_denial_spends_nothing(client: Client) -> None:
    # A burst of 10 per hour and a quota of 6 per day: the quota binds first.
    await put_policy(
        client, "tier", limits=[limit(10, HOUR), limit(6, DAY, "fixed_window")], match=["t:*"]
    )
    answers = [await client.post("/rate-limit/t:a/check") for _ in range(9)]
    assert [a.status_code for a in answers] == [200] * 6 + [429] * 3
    assert all(a.json()["policy"] == "tier" for a in answers)
    denied = answers[-1]
    assert denied.headers["ratelimit-policy"] == (
        '"0-token_bucket";q=10;w=3600, "1-fixed_window";q=6;w=86400'
    )
    assert denied.headers["ratelimit"].startswith('"1-fixed_window";r=0;')  # the quota denies
    usage = {u["algorithm"]: u["remaining"] for u in (await status_of(client, "t:a"))["limits"]}
    assert usage == {"token_bucket": 4, "fixed_window": 0}  # the 3 denials spent nothing
    # A check of more than one limit's capacity is refused outright.
    assert (await client.post("/rate-limit/t:b/check", json={"tokens": 7})).status_code == 400


async def test_resolution_own_then_exact_then_longest_prefix_then_star_then_default(
    client: Client,
) -> None:
    await put_policy(client, "star", limits=[limit(1, HOUR)], match=["*"])
    await put_policy(client, "tier", limits=[limit(2, HOUR)], match=["t:*"])
    await put_policy(client, "gold", limits=[limit(3, HOUR)], match=["t:gold:*"])
    await put_policy(client, "acme", limits=[limit(4, HOUR)], match=["t:gold:acme"])
    own = await client.post("/rate-limit/t:gold:acme:own", json=limit(5, HOUR))
    assert own.status_code == 201
    await client.post("/rate-limit/t:gold:acme", json=limit(6, HOUR))  # own beats exact
    expected = {
        "t:gold:acme": ("key", None, 6),
        "t:gold:acme:own": ("key", None, 5),
        "t:gold:x": ("policy", "gold", 3),
        "t:silver": ("policy", "tier", 2),
        "other": ("policy", "star", 1),
    }
    for key, (source, policy, requests) in expected.items():
        body = await status_of(client, key)
        assert (body["source"], body["policy"], body["requests"]) == (source, policy, requests)
    assert (await client.delete("/rate-limit/t:gold:acme")).status_code == 200
    assert (await status_of(client, "t:gold:acme"))["policy"] == "acme"  # exact beats prefix
    assert (await client.delete("/policies/star")).status_code == 200
    body = await status_of(client, "other")
    assert (body["source"], body["policy"], body["limit"]) == ("default", None, 100)


async def test_shadow_policy_allows_reports_and_counts(client: Client) -> None:
    await put_policy(client, "dark", limits=[limit(2, HOUR)], match=["d:*"], shadow=True)
    answers = [await client.post("/rate-limit/d:1/check") for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.json().get("shadow") for a in answers] == [None, None, "denied", "denied"]
    assert [a.headers.get("x-ratelimit-shadow") for a in answers] == [
        None,
        None,
        "denied",
        "denied",
    ]
    assert "retry-after" not in answers[-1].headers
    metrics = (await client.get("/metrics")).text
    assert (
        'throttler_checks_total{algorithm="token_bucket",decision="shadow_denied"} 2.0' in metrics
    )
    # A key's own limits in shadow mode behave the same.
    own = {"limits": [limit(1, HOUR)], "shadow": True}
    assert (await client.post("/rate-limit/own-dark", json=own)).json() == {
        "limits": [{**limit(1, HOUR), "burst": 1}],
        "shadow": True,
    }
    answers = [await client.post("/rate-limit/own-dark/check") for _ in range(2)]
    assert [a.json().get("shadow") for a in answers] == [None, "denied"]
    assert (await status_of(client, "own-dark"))["shadow"] is True


async def test_reset_clears_usage_keeps_limits_and_is_audited(
    client: Client, redis: Redis, keys: KeySpace
) -> None:
    body = {"limits": [limit(3, HOUR), limit(5, DAY, "sliding_window")]}
    assert (await client.post("/rate-limit/r:1", json=body)).status_code == 201
    for _ in range(3):
        await client.post("/rate-limit/r:1/check")
    assert (await client.post("/rate-limit/r:1/check")).status_code == 429
    resp = await client.post("/rate-limit/r:1/reset")
    assert (resp.status_code, resp.json()) == (200, {"key": "r:1", "reset": True})
    after = await status_of(client, "r:1")
    assert [u["remaining"] for u in after["limits"]] == [3, 5]
    assert after["source"] == "key"
    assert (await client.post("/rate-limit/r:1/check")).status_code == 200

    async def audited() -> list[AuditEvent]:
        rows: Any = await redis.xrange(keys.audit_stream)
        return [msgspec.json.decode(f[b"event"], type=AuditEvent) for _, f in rows]

    async def resets() -> list[AuditEvent]:
        return [a for a in await audited() if a.type == "reset_key"]

    [record] = await until(resets, 5)
    assert (record.key, record.result) == ("r:1", "reset")
    assert record.actor.startswith("http:")
    # A reset of a key on the default or a policy works too (and keeps nothing else).
    await client.post("/rate-limit/plain/check")
    assert (await client.post("/rate-limit/plain/reset")).status_code == 200
    assert (await status_of(client, "plain"))["remaining"] == 100


async def test_listing_pages_through_keys_with_limits_of_their_own(client: Client) -> None:
    for i in range(25):
        resp = await client.post(f"/rate-limit/ls:{i:02d}", json=limit(i + 1, HOUR))
        assert resp.status_code == 201
    await client.post("/rate-limit/other:1", json=limit(1, HOUR))
    await client.post("/rate-limit/ls:default-only/check")  # state only: not listed
    seen: list[str] = []
    cursor = ""
    for _ in range(30):
        page = (
            await client.get("/rate-limit", params={"prefix": "ls:", "count": 10, "cursor": cursor})
        ).json()
        seen += [item["key"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert sorted(seen) == [f"ls:{i:02d}" for i in range(25)]
    one = (await client.get("/rate-limit", params={"prefix": "ls:07"})).json()["items"]
    assert one == [
        {
            "key": "ls:07",
            "limits": [{**limit(8, HOUR), "burst": 8}],
            "shadow": False,
            "inline": False,
        }
    ]
    bad = await client.get("/rate-limit", params={"cursor": "nonsense"})
    assert bad.status_code == 400


async def test_status_of_any_key_answers_and_creates_nothing(
    client: Client, redis: Redis, keys: KeySpace
) -> None:
    for key in ("bob@example.com", "café", "10.0.0.1"):
        body = await status_of(client, key)
        assert (body["source"], body["remaining"], body["limit"]) == ("default", 100, 100)
        assert await redis.exists(*keys.script_keys(key)) == 0
        assert (await client.post(f"/rate-limit/{key}/check")).json()["remaining"] == 99
    assert (await client.get("/rate-limit/a%2Fb")).status_code in (400, 404)
    assert (await client.post("/rate-limit/a%2Fb/check")).json()["error"] == "invalid_key"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"limits": [], "match": ["x"]}, 400),
        ({"limits": [limit(1, 1000)] * 9, "match": ["x"]}, 400),
        ({"limits": [limit(1, 1000)], "match": ["a*b"]}, 400),
        ({"limits": [limit(1, 1000)], "match": ["*x"]}, 400),
        ({"limits": [limit(1, 1000)], "match": [""]}, 400),
        ({"limits": [limit(1, 1000)], "match": ["a b*"]}, 400),
        ({"limits": [limit(1, 1000)], "match": ["{x}*"]}, 400),
        ({"limits": [limit(1, 1000)], "match": ["x", "x"]}, 400),
        ({"limits": [limit(1, 1000)], "match": ["x"], "extra": 1}, 400),
        ({"limits": [{"requests": 0, "window_ms": 1}], "match": ["x"]}, 400),
        ({"limits": [limit(1, 1000)], "match": "x"}, 400),
    ],
)
async def test_hostile_policy_bodies_are_4xx(
    client: Client, body: dict[str, Any], status: int
) -> None:
    resp = await client.put("/policies/p", json=body)
    assert resp.status_code == status, resp.text
    assert set(resp.json()) == {"error", "message"}
    assert (await client.get("/policies/p")).status_code == 404


async def test_a_pattern_belongs_to_one_policy(client: Client) -> None:
    await put_policy(client, "one", limits=[limit(1, 1000)], match=["dup:*", "solo"])
    resp = await client.put("/policies/two", json={"limits": [limit(2, 1000)], "match": ["dup:*"]})
    assert resp.status_code == 409
    assert resp.json()["error"] == "conflict"
    # The owner may move it: replace "one" without it, then "two" takes it.
    await put_policy(client, "one", status=200, limits=[limit(1, 1000)], match=["solo"])
    await put_policy(client, "two", limits=[limit(2, 1000)], match=["dup:*"])
    names = [p["name"] for p in (await client.get("/policies")).json()["items"]]
    assert names == ["one", "two"]
    assert (
        await client.put("/policies/bad name", json={"limits": [limit(1, 1)]})
    ).status_code == 400
    assert (await client.delete("/policies/nothing")).status_code == 404


async def test_several_limits_of_a_key_round_trip(client: Client) -> None:
    body = {"limits": [limit(2, 1000), limit(100, DAY, "fixed_window")], "shadow": False}
    created = await client.post("/rate-limit/multi", json=body)
    assert created.status_code == 201
    assert created.json()["limits"][1] == {**limit(100, DAY, "fixed_window"), "burst": None}
    # The single-limit body answers as before.
    single = await client.post("/rate-limit/single", json=limit(10, 60_000))
    assert single.json() == {**limit(10, 60_000), "burst": 10}
    two = [limit(3, 1000), limit(4, HOUR)]
    replaced = await client.post("/rate-limit/multi", json={"limits": two})
    assert replaced.status_code == 200
    removed = await client.delete("/rate-limit/multi")
    expected = [{**limit(3, 1000), "burst": 3}, {**limit(4, HOUR), "burst": 4}]
    assert removed.json() == {"limits": expected, "shadow": False}
    # One limit without shadow is a single limit, however it was sent.
    await client.post("/rate-limit/one", json={"limits": [limit(5, 1000)]})
    assert (await client.delete("/rate-limit/one")).json() == {**limit(5, 1000), "burst": 5}
    both = {**limit(1, 1000), "limits": [limit(1, 1000)]}
    assert (await client.post("/rate-limit/x", json=both)).status_code == 400
    assert (
        await client.post("/rate-limit/x", json={"limits": [limit(1, 1)] * 9})
    ).status_code == 400


async def test_a_policy_change_reaches_another_process_soon_even_without_its_notification(
    redis_url: str, prefix: str, gateway: Gateway
) -> None:
    settings = _settings(redis_url, prefix)
    async with app_client(settings) as a, app_client(settings, worker=False) as b:
        began = time.monotonic()
        await put_policy(a, "seen", limits=[limit(7, HOUR)], match=["seen:*"])

        async def under(key: str, policy: str) -> bool:
            return bool((await status_of(b, key))["policy"] == policy)

        await until(lambda: under("seen:1", "seen"), 2, interval=0.005)
        propagated = time.monotonic() - began
        # Written straight to Redis, as if its notification were lost: the version poll
        # finds it within about a second.
        store = ConfigStore(gateway, KeySpace(prefix), 60_000)
        policy = Policy(limits=[Limit(8, HOUR)], match=["quiet:*"])
        assert (await store.apply_policy("quiet", policy)).outcome == "created"
        began = time.monotonic()
        await until(lambda: under("quiet:1", "quiet"), 3)
        fallback = time.monotonic() - began
    assert propagated < 2
    assert fallback < 1.5, fallback


class _LoadsAPolicyMidCall:
    """A gateway whose script call lets a policy load while it runs, as a notification
    arriving between the call and its reply would."""

    cluster = False

    def __init__(self, gateway: Gateway, table: PolicyTable) -> None:
        self._gateway = gateway
        self._table = table

    async def run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        reply = await self._gateway.run(script, keys, args)
        two = [Limit(5, HOUR), Limit(100, DAY, "fixed_window")]
        self._table.load({"late": Policy(limits=two, match=["late:*"])}, 1)
        return reply


async def test_a_status_is_described_by_the_limits_it_was_computed_for(
    gateway: Gateway, keys: KeySpace
) -> None:
    """A policy loaded while GET /rate-limit/{key} runs: the answer describes the limits
    the script decided (once a 500: one limit's usage paired with the new policy's two)."""
    table = PolicyTable(Resolved.of(None, (Limit(10, HOUR),)))
    limiter = Limiter(cast("Gateway", _LoadsAPolicyMidCall(gateway, table)), keys, table)
    status = await limiter.status("late:1")
    assert status.usage is not None
    assert (status.source, len(status.limits), len(status.usage)) == ("default", 1, 1)
    assert (await limiter.status("late:1")).policy == "late"  # and the next one sees it
