"""A config stream whose last entry id is the largest possible (an XADD by anyone with
Redis write access) takes no new entry: every change then answers 503 with a clear
error (not 500), and the recovery docs/operations.md gives brings it back."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import pytest
from redis.exceptions import ResponseError

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
    added = (await redis.xinfo_stream(stream))["entries-added"]
    try:
        await redis.execute_command(  # type: ignore[no-untyped-call]
            "XSETID", stream, good, "ENTRIESADDED", added, "MAXDELETEDID", good
        )
        await redis.xgroup_setid(stream, APPLIERS, good)
    except ResponseError as exc:  # Valkey: never below a deleted id; rebuild the stream
        if "max_deleted_entry_id" not in str(exc):
            raise
        entries: Any = await redis.xrange(stream)
        await redis.delete(stream)
        for entry_id, fields in entries:
            await redis.xadd(stream, fields, id=entry_id)
        # (the running worker may have made the group again already: it does when it is gone)
        with contextlib.suppress(ResponseError):
            await redis.xgroup_create(stream, APPLIERS, id=good, mkstream=True)
        await redis.xgroup_setid(stream, APPLIERS, good)

    assert (await client.post("/rate-limit/after", json=LIMIT)).status_code == 201
    assert (await client.get("/rate-limit/before")).json()["source"] == "key"
