"""A config stream whose last entry id is the largest possible (an XADD by anyone with
Redis write access) takes no new entry: every change then answers 503 with a clear
error (not 500), and the recovery docs/operations.md gives brings it back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from core.keys import APPLIERS

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.testing import AsyncTestClient
    from redis.asyncio import Redis

    from core.keys import KeySpace

pytestmark = pytest.mark.anyio

LAST = "18446744073709551615-18446744073709551615"
LIMIT = {"requests": 5, "window_ms": 60_000}


async def test_an_exhausted_stream_is_a_503_and_can_be_recovered(
    client: AsyncTestClient[Litestar], redis: Redis, keys: KeySpace
) -> None:
    assert (await client.post("/rate-limit/before", json=LIMIT)).status_code == 201
    await redis.xadd(keys.config_stream, {"event": "{}"}, id=LAST)
    for path, method, body in [
        ("/rate-limit/after", "POST", LIMIT),
        ("/rate-limit/before", "DELETE", None),
        ("/policies/p", "PUT", {"limits": [LIMIT], "match": ["p:*"]}),
    ]:
        resp = await client.request(method, path, json=body)
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"] == "config_stream_exhausted"
        assert "docs/operations.md" in resp.json()["message"]

    # The recovery of docs/operations.md ("Config stream exhausted").
    stream = keys.config_stream
    await redis.xdel(stream, LAST)
    await redis.xack(stream, APPLIERS, LAST)
    newest: Any = await redis.xrevrange(stream, count=1)
    good = newest[0][0].decode() if newest else "0-1"
    await redis.execute_command("XSETID", stream, good)  # type: ignore[no-untyped-call]
    await redis.xgroup_setid(stream, APPLIERS, good)

    assert (await client.post("/rate-limit/after", json=LIMIT)).status_code == 201
    assert (await client.get("/rate-limit/before")).json()["source"] == "key"
