"""POST /check: per-item decisions, all-or-nothing semantics, validation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from core.config_store import ConfigStore
from core.keys import KeySpace
from schemas.limits import Limit

if TYPE_CHECKING:
    from litestar.testing import AsyncTestClient
    from redis.asyncio import Redis

    from core.gateway import Gateway
    from core.settings import Settings

pytestmark = pytest.mark.anyio


async def _limits(gateway: Gateway, settings: Settings, **limits: Limit) -> None:
    store = ConfigStore(gateway, KeySpace(settings.key_prefix), settings.tombstone_ttl_ms)
    for key, limit in limits.items():
        await store.apply(key, limit)


async def test_each_item_gets_its_own_decision(
    client: AsyncTestClient[Any], redis: Redis, settings: Settings, gateway: Gateway
) -> None:
    await _limits(gateway, settings, a=Limit(2, 60000), b=Limit(1, 60000, "fixed_window"))
    body = {"checks": [{"key": "a"}, {"key": "b"}, {"key": "b"}, {"key": "a", "tokens": 1}]}
    resp = await client.post("/check", json=body)
    assert resp.status_code == 200
    data = resp.json()
    assert data["allowed"] is False
    decisions = [(r["key"], r["allowed"], r["remaining"]) for r in data["results"]]
    # Items on one key are decided in order within the one round trip.
    assert decisions == [("a", True, 1), ("b", True, 0), ("b", False, 0), ("a", True, 0)]
    denied = data["results"][2]
    assert denied["retry_after_ms"] > 0
    assert "retry_after_ms" not in data["results"][0]


async def test_all_or_nothing_spends_only_when_every_key_allows(
    client: AsyncTestClient[Any], gateway: Gateway, settings: Settings
) -> None:
    await _limits(
        gateway,
        settings,
        a=Limit(3, 60000),
        b=Limit(1, 60000, "sliding_window"),
        c=Limit(5, 60000, "gcra"),
    )
    group = {
        "checks": [{"key": "a"}, {"key": "b"}, {"key": "c", "tokens": 2}],
        "all_or_nothing": True,
    }
    first = (await client.post("/check", json=group)).json()
    assert first["allowed"] is True
    assert [r["remaining"] for r in first["results"]] == [2, 0, 3]

    second = (await client.post("/check", json=group)).json()
    assert second["allowed"] is False
    assert [r["allowed"] for r in second["results"]] == [False, False, False]
    assert second["results"][1]["retry_after_ms"] > 0  # b could not pay: says when
    # Nothing was spent from a or c although each could have paid on its own.
    for key, remaining in (("a", 2), ("c", 3)):
        status = (await client.get(f"/rate-limit/{key}")).json()
        assert status["remaining"] == remaining


async def test_all_or_nothing_merges_a_key_listed_twice(
    client: AsyncTestClient[Any], redis: Redis, settings: Settings, gateway: Gateway
) -> None:
    await _limits(gateway, settings, a=Limit(3, 60000))
    group = {
        "checks": [{"key": "a", "tokens": 2}, {"key": "a", "tokens": 2}],
        "all_or_nothing": True,
    }
    data = (await client.post("/check", json=group)).json()
    assert data["allowed"] is False  # 4 > 3 together, though each 2 fits alone
    assert (await client.get("/rate-limit/a")).json()["remaining"] == 3


async def test_tokens_beyond_capacity_is_an_item_error(
    client: AsyncTestClient[Any], redis: Redis, settings: Settings, gateway: Gateway
) -> None:
    await _limits(gateway, settings, a=Limit(3, 60000))
    data = (
        await client.post("/check", json={"checks": [{"key": "a", "tokens": 4}, {"key": "x"}]})
    ).json()
    assert data["results"][0]["error"] == "validation_error"
    assert "capacity" in data["results"][0]["message"]
    assert data["results"][1]["allowed"] is True

    grouped = {"checks": [{"key": "a", "tokens": 4}, {"key": "x"}], "all_or_nothing": True}
    data = (await client.post("/check", json=grouped)).json()
    assert data["allowed"] is False
    assert data["results"][0]["error"] == "validation_error"
    assert data["results"][1]["allowed"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"checks": []}, "checks"),
        ({"checks": [{"key": "bad key"}]}, "key"),
        ({"checks": [{"key": "a{b}"}]}, "key"),
        ({"checks": [{"key": "a", "tokens": -1}]}, "tokens"),
        ({"checks": [{"key": "a", "extra": 1}]}, "extra"),
        ({"checks": [{"key": "a"}] * 1001}, "checks"),
        ({"checks": [{"key": "a"}], "all_or_nothing": "yes"}, "all_or_nothing"),
        ({}, "checks"),
    ],
)
async def test_invalid_batches_are_400_naming_the_field(
    client: AsyncTestClient[Any], body: dict[str, Any], field: str
) -> None:
    resp = await client.post("/check", json=body)
    assert resp.status_code == 400
    data = resp.json()
    assert set(data) == {"error", "message"}
    assert data["error"] == "validation_error"
    assert field in data["message"]
