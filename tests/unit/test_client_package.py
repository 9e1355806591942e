"""The ``throttler-client`` distribution as a package: versioned with the service, free of
the service's packages, with one surface in both clients and the requests they build."""

from __future__ import annotations

import ast
import inspect
import json
import tomllib
from pathlib import Path

import httpx
import pytest

import throttler_client
from core.version import VERSION
from throttler_client import AsyncThrottlerClient, Limit, ThrottlerClient, calls

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
SERVICE_PACKAGES = {"api", "core", "workers", "schemas", "throttler", "bench", "tests"}
#: Methods that differ between the two only by being sync or async.
LIFECYCLE = {"close", "aclose"}


def test_the_client_is_versioned_with_the_service() -> None:
    service = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    client = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert client["name"] == "throttler-client"
    assert client["version"] == service == VERSION == throttler_client.__version__


def test_the_client_imports_nothing_of_the_service() -> None:
    imported: set[str] = set()
    for path in (CLIENT / "src" / "throttler_client").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    assert "throttler_client" in imported
    assert not imported & SERVICE_PACKAGES, imported & SERVICE_PACKAGES


def _surface(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") and name not in LIFECYCLE
    }


#: Methods that are context managers (``with`` / ``async with``): the same parameters.
CONTEXT_MANAGERS = {"acquire"}


def test_both_clients_have_the_same_methods_and_signatures() -> None:
    sync, async_ = _surface(ThrottlerClient), _surface(AsyncThrottlerClient)
    assert set(sync) == set(async_)
    assert {"check", "check_many", "peek", "set_limit", "delete_limit", "reset"} <= set(sync)
    assert {"acquire", "release", "refund"} <= set(sync)
    for name, signature in sync.items():
        if name in CONTEXT_MANAGERS:
            assert signature.parameters == async_[name].parameters, name
            continue
        assert signature == async_[name], name
        assert inspect.iscoroutinefunction(getattr(AsyncThrottlerClient, name)), name
        assert not inspect.iscoroutinefunction(getattr(ThrottlerClient, name)), name


def test_requests_carry_json_content_type_and_the_right_token() -> None:
    with ThrottlerClient(
        "http://127.0.0.1:9/base/", token="check-t", admin_token="admin-t"
    ) as client:
        check = client._request(calls.check("free:a b", 2), 1.0)
        assert check.url == httpx.URL("http://127.0.0.1:9/base/rate-limit/free:a%20b/check")
        assert check.headers["content-type"] == "application/json"
        assert check.headers["authorization"] == "Bearer check-t"
        assert json.loads(check.content) == {"tokens": 2}

        limit = client._request(calls.set_limit("k", Limit(5, 1000, "gcra")), 1.0)
        assert limit.headers["content-type"] == "application/json"
        assert limit.headers["authorization"] == "Bearer admin-t"
        assert json.loads(limit.content) == {"requests": 5, "window_ms": 1000, "algorithm": "gcra"}

        batch = client._request(calls.check_many(["a", ("b", 3)], all_or_nothing=True), 1.0)
        assert batch.headers["content-type"] == "application/json"
        assert json.loads(batch.content) == {
            "checks": [{"key": "a", "tokens": 1}, {"key": "b", "tokens": 3}],
            "all_or_nothing": True,
        }

        reset = client._request(calls.reset("k"), 1.0)  # no body, so no Content-Type
        assert (reset.method, reset.content, reset.headers.get("content-type")) == (
            "POST",
            b"",
            None,
        )
        assert reset.url.path == "/base/rate-limit/k/reset"


def test_an_admin_token_defaults_to_the_token() -> None:
    with ThrottlerClient("http://127.0.0.1:9", token="only") as client:
        request = client._request(calls.delete_limit("k"), 1.0)
        assert request.headers["authorization"] == "Bearer only"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base_url": "localhost:8080"}, "base_url must be an http"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"retries": -1}, "retries must be 0 or more"),
        ({"failure_policy": "maybe"}, "failure_policy must be 'open' or 'closed'"),
        ({"pool_size": 0}, "pool_size must be at least 1"),
        ({"denial_cache": -1}, "max_keys must be 0"),
    ],
)
def test_bad_options_are_refused_at_once(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThrottlerClient(**options)  # type: ignore[arg-type]
