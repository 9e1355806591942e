"""Methods and paths as a real server (uvicorn) sees them: OPTIONS lists what a path
serves, HEAD probes answer as GET without a body, and an encoded slash in a key is an
invalid key, not a missing route."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.support.servers import RedisProcess


@contextlib.contextmanager
def serving(redis_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        "WORKER_METRICS_PORT": "0",
    }
    service = ServiceProcess(env).start(tmp_path)
    try:
        with httpx.Client(base_url=service.base_url, timeout=10) as client:
            yield client
    finally:
        service.stop()


@pytest.fixture(scope="module")
def api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with serving(redis_url, tmp_path_factory.mktemp("http-methods")) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/rate-limit/k", "DELETE, GET, OPTIONS, POST"),
        ("/rate-limit/k/check", "OPTIONS, POST"),
        ("/health", "GET, HEAD, OPTIONS"),
        ("/ready", "GET, HEAD, OPTIONS"),
        ("/dead-letters", "GET, OPTIONS"),
    ],
)
def test_options_lists_every_method_of_the_path(api: httpx.Client, path: str, allow: str) -> None:
    answer = api.options(path)
    assert answer.status_code == 204
    assert answer.headers["allow"] == allow


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_head_answers_like_get_without_a_body(api: httpx.Client, path: str) -> None:
    got = api.get(path)
    with api.stream("HEAD", path) as headed:
        assert headed.status_code == got.status_code == 200
        assert headed.headers["content-type"] == got.headers["content-type"]
        assert headed.headers["content-length"] == str(len(got.content))
        assert headed.read() == b""


def test_head_ready_is_503_when_redis_is_down(own_redis: RedisProcess, tmp_path: Path) -> None:
    with serving(own_redis.url, tmp_path) as client:
        own_redis.stop()
        assert client.head("/ready").status_code == 503
        assert client.head("/health").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/rate-limit/a%2Fb"),
        ("POST", "/rate-limit/a%2Fb"),
        ("DELETE", "/rate-limit/a%2fb"),
        ("GET", "/rate-limit/a%2Fcheck"),  # would reach /rate-limit/{key}/check with key "a"
        ("DELETE", "/rate-limit/a%2Fcheck"),
    ],
)
def test_an_encoded_slash_in_a_key_is_an_invalid_key(
    api: httpx.Client, method: str, path: str
) -> None:
    answer = api.request(method, path, json={"requests": 1, "window_ms": 1000})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_key"
    assert "first invalid character '/'" in answer.json()["message"]
