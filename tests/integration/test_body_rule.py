"""One rule for request bodies (docs/api.md, "Request bodies"), on the routes that take one
here: empty or whitespace-only is no body; otherwise exactly one JSON value of the
documented shape (sent as application/json); in an object, the last of duplicate keys
wins; a whole number written with a zero fraction is that integer (JSON Schema's
`integer`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from core.settings import Settings, load_settings

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(redis_url: str, prefix: str) -> Settings:
    """conftest's settings (its ``client`` uses them), with a worker that stops sooner."""
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "WORKER_BLOCK_MS": "100"}
    return load_settings(env, env_file=None)


JSON = {"Content-Type": "application/json"}  # any other type of body is a 415 (test_edge)
NO_BODY = {"error": "validation_error", "message": "a JSON body is required"}


@pytest.mark.parametrize(
    "body", [b"", b" ", b"\n", b" \t\r\n ", b" " * 10_000], ids=["empty", "1", "n", "mix", "10k"]
)
async def test_an_empty_or_blank_body_is_no_body(
    client: AsyncTestClient[Litestar], body: bytes
) -> None:
    answer = await client.post("/rate-limit/body:blank", content=body, headers=JSON)
    assert (answer.status_code, answer.json()) == (400, NO_BODY)


async def test_whitespace_around_one_value_is_fine(client: AsyncTestClient[Litestar]) -> None:
    answer = await client.post(
        "/rate-limit/body:padded",
        content=b' \n{"requests": 5, "window_ms": 1000}\r\n ',
        headers=JSON,
    )
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"requests": 5, "window_ms": 1000} {"requests": 6, "window_ms": 1000}',
        b'{"requests": 5, "window_ms": 1000}]',
        b"[]",
        b"null",
        b'"text"',
    ],
)
async def test_anything_but_one_value_of_the_shape_is_refused(
    client: AsyncTestClient[Litestar],
    body: bytes,
) -> None:
    answer = await client.post("/rate-limit/body:bad", content=body, headers=JSON)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "validation_error"


async def test_the_last_of_duplicate_keys_wins(client: AsyncTestClient[Litestar]) -> None:
    body = b'{"requests": 5, "window_ms": 1000, "requests": 7}'
    answer = await client.post("/rate-limit/body:dup", content=body, headers=JSON)
    assert answer.status_code == 201, answer.text
    assert answer.json()["requests"] == 7


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"requests": 5.0, "window_ms": 1000.0}', 201),
        (b'{"requests": 5e0, "window_ms": 1e3}', 201),
        (b'{"requests": 5.5, "window_ms": 1000}', 400),
        (b'{"requests": "5", "window_ms": 1000}', 400),
    ],
)
async def test_a_whole_number_is_an_integer_however_written(
    client: AsyncTestClient[Litestar],
    body: bytes,
    status: int,
) -> None:
    answer = await client.post("/rate-limit/body:num", content=body, headers=JSON)
    assert answer.status_code == status, answer.text
    if status == 201:
        assert answer.json()["requests"] == 5
