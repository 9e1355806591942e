from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from litestar.testing import AsyncTestClient

pytestmark = pytest.mark.anyio


async def test_create_then_check(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    created = await client.post(
        "/rate-limit/free:client-1", json={"requests": 2, "window_ms": 60000}
    )
    assert created.status_code == 201
    codes = [(await client.post("/rate-limit/free:client-1/check")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
