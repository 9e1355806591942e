"""The whole system on a real local Redis Cluster: three masters on free loopback ports,
built by a fixture from the same redis-server binary (REDIS_CLUSTER=true).

* every script's keys share one hash slot (and the cluster would refuse them otherwise:
  everything below runs every script);
* exactness: two `throttler serve` processes, 200 concurrent checks, limit 50 -> 50;
* the config round trip: POST -> applied by the worker -> GET -> audit -> SSE;
* a `throttler worker` killed with SIGKILL mid-way; another finishes exactly.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import httpx
import msgspec
import pytest
from redis.crc import key_slot

from core.config_store import ConfigStore
from core.gateway import Gateway
from core.keys import APPLIERS, KeySpace
from core.limiter import Limiter
from core.policies import PolicySync, PolicyTable, Resolved
from core.scripts import APPLY, CHECK, FINISH
from core.settings import load_settings
from core.streams import EVENT_FIELD, publish_many
from schemas.events import AuditEvent, KeyEvent, SetLimit
from schemas.limits import Limit, Policy
from tests.e2e.test_redis_auth_tls import acl_rules, knows_setinfo
from tests.support.cluster import LocalCluster, cluster_env
from tests.support.service import ServiceProcess, running

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

    from redis.asyncio import Redis

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

T = TypeVar("T")
DAY_MS = 86_400_000
_audit = msgspec.json.Decoder(AuditEvent)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster()
    try:
        yield local.start()
    finally:
        local.close()


@pytest.fixture
async def door(cluster: LocalCluster, prefix: str) -> AsyncIterator[Gateway]:
    """The service's gateway to the cluster, made as the service makes its own."""
    gateway = Gateway(load_settings(cluster_env(cluster, prefix), env_file=None))
    await gateway.prepare()
    try:
        yield gateway
    finally:
        await gateway.aclose()


@pytest.fixture
def client(door: Gateway) -> Any:
    """Its asyncio RedisCluster client."""
    return door.client


async def until(probe: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        await anyio.sleep(0.005)


# --- slots ------------------------------------------------------------------------------

KEYS = ["a", "user:42", "free:client-123", "x" * 256, "a.b-c_d:e", "0"]
PREFIXES = ["throttler", "t", "prod.eu-1"]


def slots(keys: list[str]) -> set[int]:
    return {key_slot(k.encode()) for k in keys}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_script_call_touches_one_hash_slot(prefix: str) -> None:
    space = KeySpace(prefix)
    limiter = Limiter(None, space, Limit(requests=1, window_ms=1))  # type: ignore[arg-type]
    store = ConfigStore(None, space, 1000)  # type: ignore[arg-type]
    for key in KEYS:
        check_keys, _ = limiter.script_args(key, 1)
        apply_keys, _ = store.script_args(key, Limit(requests=1, window_ms=1), "1-1")
        assert check_keys == apply_keys == [space.limit(key), space.log(key), space.leases(key)]
        assert len(slots(check_keys)) == 1, (CHECK.name, APPLY.name, key)
        assert f"{{{key}}}" in space.limit(key)  # the tag is the key itself
    # FINISH acks on the config stream and appends to the audit or dead-letter stream.
    streams = [space.config_stream, space.audit_stream, space.dead_stream]
    assert len(slots(streams)) == 1, FINISH.name
    assert all(s.startswith(f"{{{prefix}}}:") for s in streams)


def test_limits_spread_over_every_node_and_match_the_servers_slots(
    cluster: LocalCluster,
) -> None:
    from redis import Redis as SyncRedis

    space = KeySpace("throttler")
    keys = [space.limit(f"user:{i}") for i in range(300)]
    owners: Counter[int] = Counter()
    ranges: list[tuple[int, int, int]] = []
    node = SyncRedis(port=cluster.nodes[0].port)
    try:
        for start, end, master, *_ in node.execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
            ranges.append((int(start), int(end), int(master[1])))
        for key in keys[:20]:  # our slot computation is the server's
            assert node.execute_command("CLUSTER", "KEYSLOT", key) == key_slot(key.encode())  # type: ignore[no-untyped-call]
    finally:
        node.close()
    for key in keys:
        slot = key_slot(key.encode())
        owners.update(port for start, end, port in ranges if start <= slot <= end)
    assert len(owners) == 3, owners  # 300 limits land on all three masters
    assert min(owners.values()) > 50


# --- exactness --------------------------------------------------------------------------

LIMIT, CHECKS = 50, 200


@pytest.fixture(scope="module")
def two_services(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServiceProcess]]:
    env = cluster_env(cluster, f"t{uuid.uuid4().hex[:12]}")
    procs = [ServiceProcess(dict(env)), ServiceProcess(dict(env))]
    with running(procs, tmp_path_factory.mktemp("cluster")):
        yield procs


async def window_far_from_its_end(http: httpx.AsyncClient, base: str) -> int:
    """A fixed window length whose current window has the most time left, by Redis's clock.

    Fixed windows are aligned to multiples of their length since the epoch; a test that
    straddled a boundary would see up to twice the limit admitted. A check on a throwaway
    key tells how long the current window of each candidate length has left.
    """
    left = {}
    for window in (DAY_MS, DAY_MS + 3_600_000, DAY_MS + 7_200_000):
        inline = {"requests": 1, "window_ms": window, "algorithm": "fixed_window"}
        peek = await http.post(f"{base}/rate-limit/clock-{uuid.uuid4().hex}/check", json=inline)
        left[window] = peek.json()["reset_after_ms"]
    best = max(left, key=lambda w: left[w])
    assert left[best] > 3_600_000, left
    return best


@pytest.mark.parametrize("algorithm", ["token_bucket", "gcra", "sliding_window", "fixed_window"])
async def test_two_processes_admit_exactly_the_limit(
    two_services: list[ServiceProcess], algorithm: str
) -> None:
    key = f"exact-{algorithm}"
    limits = httpx.Limits(max_connections=CHECKS, max_keepalive_connections=CHECKS)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        # A day per request at most refills: nothing comes back while the test runs.
        window = DAY_MS
        if algorithm == "fixed_window":
            window = await window_far_from_its_end(http, two_services[0].base_url)
        created = await http.post(
            f"{two_services[0].base_url}/rate-limit/{key}",
            json={"requests": LIMIT, "window_ms": window, "algorithm": algorithm},
        )
        assert created.status_code == 201, created.text
        statuses: list[int] = []
        remaining: list[int] = []

        async def one(i: int) -> None:
            resp = await http.post(f"{two_services[i % 2].base_url}/rate-limit/{key}/check")
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                remaining.append(resp.json()["remaining"])

        async with anyio.create_task_group() as tg:
            for i in range(CHECKS):
                tg.start_soon(one, i)
        assert Counter(statuses) == {200: LIMIT, 429: CHECKS - LIMIT}
        assert sorted(remaining) == list(range(LIMIT))
        after = await http.get(f"{two_services[1].base_url}/rate-limit/{key}")
        assert after.json()["remaining"] == 0


# --- the config round trip ---------------------------------------------------------------


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    event: dict[str, str] = {}
    async for line in lines:
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


async def test_config_round_trip(
    cluster: LocalCluster, prefix: str, client: Redis, tmp_path: Path
) -> None:
    service = ServiceProcess(cluster_env(cluster, prefix)).start(tmp_path)
    limit = {"requests": 7, "window_ms": 60000, "algorithm": "gcra", "burst": 9}
    keys = KeySpace(prefix)
    try:
        base = service.base_url
        async with (
            httpx.AsyncClient(base_url=base, timeout=10) as api,
            httpx.AsyncClient(base_url=base, timeout=10) as listener,
            listener.stream("GET", "/notifications", params={"prefix": "rt:"}) as stream,
        ):
            events = sse_events(stream.aiter_lines())
            assert (await anext(events))["event"] == "subscribed"
            created = await api.post("/rate-limit/rt:one", json=limit)
            assert created.status_code == 201, created.text  # applied by the worker in time
            assert created.json() == limit
            got = await api.get("/rate-limit/rt:one")
            assert got.status_code == 200
            assert {k: got.json()[k] for k in limit} == limit
            with anyio.fail_after(10):
                note = await anext(events)
        assert note["event"] == "limit_changed"
        body = json.loads(note["data"])
        assert (body["key"], body["result"], body["limit"]) == ("rt:one", "created", limit)

        rows: Any = await client.xrange(keys.audit_stream)
        records = [_audit.decode(fields[EVENT_FIELD.encode()]) for _, fields in rows]
        assert [(r.key, r.result, r.config_id) for r in records] == [
            ("rt:one", "created", body["event_id"])
        ]
        assert msgspec.to_builtins(records[0].after) == limit
    finally:
        service.stop()


# --- an ACL user ------------------------------------------------------------------------

#: What a cluster needs beyond the standalone set: the slot map, and the command table the
#: cluster client reads once to find the keys of each command.
CLUSTER_ACL = ["+cluster|slots", "+command"]


async def test_acl_user_on_a_cluster(cluster: LocalCluster, prefix: str, tmp_path: Path) -> None:
    from redis import Redis as SyncRedis

    password = uuid.uuid4().hex
    nodes = [SyncRedis(port=node.port) for node in cluster.nodes]
    try:
        for node in nodes:
            node.acl_log_reset()
            command: Any = node.execute_command
            rules = acl_rules(prefix, password, setinfo=knows_setinfo(node))
            command("ACL", "SETUSER", "throttler", *rules, *CLUSTER_ACL)
        env = cluster_env(cluster, prefix)
        env["REDIS_URL"] = cluster.url.replace("redis://", f"redis://throttler:{password}@")
        service = ServiceProcess(env).start(tmp_path)
        try:
            async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
                assert (await http.get("/ready")).status_code == 200
                for i, algorithm in enumerate(("token_bucket", "sliding_window", "gcra")):
                    limit = {"requests": 2, "window_ms": 60000, "algorithm": algorithm}
                    created = await http.post(f"/rate-limit/acl-{i}", json=limit)
                    assert created.status_code == 201, created.text
                    codes = [(await http.post(f"/rate-limit/acl-{i}/check")).status_code]
                    codes.append((await http.post(f"/rate-limit/acl-{i}/check")).status_code)
                    codes.append((await http.post(f"/rate-limit/acl-{i}/check")).status_code)
                    assert codes == [200, 200, 429]
                assert (await http.get("/dead-letters")).status_code == 200
                assert (await http.get("/metrics")).status_code == 200
        finally:
            service.stop()
        denied = [entry for node in nodes for entry in node.acl_log()]
    finally:
        for node in nodes:
            node.close()
    assert denied == []
    assert password not in service.log()


# --- worker crash recovery ---------------------------------------------------------------

CHANGES, LIMIT_KEYS = 1000, 100


def worker(cluster: LocalCluster, prefix: str, consumer: str) -> ServiceProcess:
    env = cluster_env(
        cluster,
        prefix,
        WORKER_BATCH="20",
        WORKER_CLAIM_IDLE_MS="1000",
        WORKER_CLAIM_INTERVAL_MS="300",
    )
    return ServiceProcess(env, ["worker", "--consumer", consumer])


async def pending(client: Redis, keys: KeySpace, consumer: str | None = None) -> int:
    rows: Any = await client.xpending_range(
        keys.config_stream, APPLIERS, min="-", max="+", count=CHANGES, consumername=consumer
    )
    return len(rows)


async def test_worker_killed_mid_way_another_finishes(
    cluster: LocalCluster, prefix: str, door: Gateway, client: Redis, tmp_path: Path
) -> None:
    keys = KeySpace(prefix)
    events: list[KeyEvent] = [
        SetLimit(key=f"k{i % LIMIT_KEYS}", limit=Limit(requests=i + 1, window_ms=60_000), actor="x")
        for i in range(CHANGES)
    ]
    ids = await publish_many(door, keys, events, 1_000_000)
    first = worker(cluster, prefix, "crash-1").start(tmp_path, wait=False)
    second = worker(cluster, prefix, "crash-2")
    try:

        async def some_done() -> bool:
            return int(await client.xlen(keys.audit_stream)) >= CHANGES // 10

        await until(some_done, 20, "the first worker applying")
        assert first.proc is not None
        first.proc.kill()  # SIGKILL by pid: no ack, no goodbye
        assert first.proc.wait(10) == -9
        done_at_kill = int(await client.xlen(keys.audit_stream))
        assert done_at_kill < CHANGES, "the worker finished before it could be killed"

        second.start(tmp_path, wait=False)

        async def complete() -> bool:
            audited = int(await client.xlen(keys.audit_stream)) == CHANGES
            return audited and await pending(client, keys) == 0

        await until(complete, 30, "the second worker finishing")
        assert second.stop() == 0
    finally:
        first.stop()
        second.stop()

    rows: Any = await client.xrange(keys.audit_stream)
    records = [_audit.decode(fields[EVENT_FIELD.encode()]) for _, fields in rows]
    assert sorted(r.config_id for r in records) == sorted(ids)  # each exactly once
    assert {r.worker for r in records} == {"crash-1", "crash-2"}
    store = ConfigStore(door, keys, 1000)
    last = {e.key: (i, e) for i, e in zip(ids, events, strict=True)}
    for key, (entry_id, event) in last.items():
        assert isinstance(event, SetLimit)
        assert await store.get(key) == event.limit, key
        assert await store.version(key) == entry_id, key
    assert await client.xlen(keys.dead_stream) == 0


@pytest.mark.anyio
async def test_many_concurrent_checks_on_many_keys_all_succeed(door: Gateway, prefix: str) -> None:
    """A burst of checks on many keys over every node of a healthy cluster: all succeed
    (each node's calls share one pipelined connection; none is refused, none is a 503)."""
    limiter = Limiter(door, KeySpace(prefix), Limit(10, 60_000))
    results = await asyncio.gather(
        *(limiter.check(f"burst-{i}") for i in range(400)), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    assert all(r.allowed for r in results if not isinstance(r, BaseException))


@pytest.mark.anyio
async def test_listing_pages_over_every_master_and_policies_live_in_one_slot(
    door: Gateway, prefix: str
) -> None:
    keys = KeySpace(prefix)
    store = ConfigStore(door, keys, 1000)
    names = [f"listed:{i}" for i in range(40)]  # spread over every master's slots
    for i, key in enumerate(names):
        assert (await store.apply(key, Limit(i + 1, 60_000), f"1-{i}")).outcome == "created"
    owners = {door.client.keyslot(keys.limit(k)) for k in names}  # type: ignore[attr-defined]
    assert len(owners) > 3
    seen: list[str] = []
    cursor = ""
    for _ in range(100):
        found, cursor = await store.list_keys("listed:", 7, cursor)
        seen += [key for key, _ in found]
        if not cursor:
            break
    assert sorted(seen) == sorted(names)
    # Policies and their version share the streams' hash tag: one script applies them.
    assert (
        len(slots([keys.policies, keys.policy_patterns, keys.policy_gone, keys.config_stream])) == 1
    )
    policy = Policy(limits=[Limit(3, 60_000)], match=["p:*"])
    assert (await store.apply_policy("p", policy, "1-0")).outcome == "created"
    sync = PolicySync(door, keys, PolicyTable(Resolved.of(None, (Limit(1, 1000),))))
    await sync.load()
    assert sync.table.resolve("p:x").name == "p"


# -- Envoy's RLS on a cluster (docs/envoy.md, "Atomicity") ---------------------------------


async def test_rls_groups_split_by_slot_and_stay_all_or_nothing_within_one(
    door: Gateway, prefix: str
) -> None:
    from redis.crc import key_slot

    from core.groups import GroupChecker, GroupItem
    from core.keys import KeySpace
    from core.scripts import limit_args

    keys = KeySpace(prefix)
    checker = GroupChecker(door, keys)
    one = limit_args([Limit(requests=1, window_ms=DAY_MS, algorithm="fixed_window")])
    two = limit_args([Limit(requests=2, window_ms=DAY_MS, algorithm="fixed_window")])
    # Two descriptors in different slots (counter keys carry their own hash tags).
    a, b = (
        "rls/d/k=a",
        next(
            f"rls/d/k=b{i}"
            for i in range(1000)
            if key_slot(keys.limit(f"rls/d/k=b{i}").encode())
            != key_slot(keys.limit("rls/d/k=a").encode())
        ),
    )
    now = 1_767_225_600_000_000
    group = [GroupItem(a, 1, two), GroupItem(b, 1, one)]
    first = await checker.check(group, now_us=now)
    assert [(d.code, d.spent) for d in first] == [(1, True), (1, True)]
    second = await checker.check(group, now_us=now)
    # b denies in its slot; a, in another slot, was decided (and charged) on its own.
    assert [(d.code, d.spent) for d in second] == [(1, True), (0, False)]


async def test_rls_serves_from_a_cluster(
    cluster: LocalCluster, prefix: str, tmp_path: Path
) -> None:
    """A domain applied over the stream and a two-descriptor request, on a cluster."""
    import grpc

    from core.embedded import free_port
    from tests.support.rls import (
        OK,
        OVER_LIMIT,
        apply_domain,
        descriptor,
        request,
        stub,
        wait_loaded,
    )

    port = free_port()
    env = cluster_env(cluster, prefix, RLS_BIND_ADDRESS=f"127.0.0.1:{port}")
    service = ServiceProcess(env).start(tmp_path)
    try:
        config = {
            "domain": "edge",
            "descriptors": [
                {"key": "user", "rate_limit": {"unit": "day", "requests_per_unit": 2}},
                {"key": "route", "rate_limit": {"unit": "day", "requests_per_unit": 100}},
            ],
        }
        apply_domain(config, env, tmp_path)
        await wait_loaded(service.base_url, "edge")
        both = request("edge", descriptor(("user", "u")), descriptor(("route", "r")))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = stub(channel)
            answers = [await client.ShouldRateLimit(both) for _ in range(3)]
        assert [a.overall_code for a in answers] == [OK, OK, OVER_LIMIT]
        assert [a.statuses[0].limit_remaining for a in answers] == [1, 0, 0]
    finally:
        service.stop()
