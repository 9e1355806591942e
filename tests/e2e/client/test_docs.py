"""docs/clients.md: every example runs against a real ``throttler serve``.

Blocks are found by the ``<!-- test: NAME -->`` line above them; ``http://localhost:8080`` is
replaced by the service's address. The Litestar and FastAPI apps are driven through their
test clients (the 429 compared with the answer the page shows), ``pycon`` blocks run as
doctests, ``bash`` blocks as in tests/e2e/test_readme.py, JavaScript with Node.js.
"""

from __future__ import annotations

import contextlib
import doctest
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient as FastAPITestClient
from litestar.testing import TestClient

from tests.e2e.test_readme import DOC_URL, compare_http, run_examples, steps_in
from throttler_client import Limit, ThrottlerClient

if TYPE_CHECKING:
    from collections.abc import Iterator

    import httpx

    from tests.support.service import ServiceProcess

DOCS = Path(__file__).resolve().parents[3] / "docs" / "clients.md"
BLOCK = re.compile(r"<!-- test: ([\w-]+) -->\n```(\w+)\n(.*?)\n```", re.DOTALL)
#: Litestar's and Starlette's test clients connect as this host, so ``client_ip`` says:
TEST_CLIENT_KEY = "ip:testclient"


def examples() -> dict[str, str]:
    return {name: body for name, _, body in BLOCK.findall(DOCS.read_text())}


def test_every_example_of_the_page_is_tested() -> None:
    text = DOCS.read_text()
    fenced = re.findall(r"^```(python|pycon|bash|javascript)$", text, re.MULTILINE)
    marked = [language for _, language, _ in BLOCK.findall(text)]
    assert sorted(fenced) == sorted(lang for lang in marked if lang in set(fenced))
    assert set(examples()) == {
        "litestar",
        "denied-answer",
        "fastapi",
        "key-and-cost",
        "sync-client",
        "async-client",
        "spend",
        "errors",
        "fail-open",
        "curl",
        "fetch",
        "fetch-output",
    }


@contextlib.contextmanager
def app_of(name: str, service: ServiceProcess) -> Iterator[Any]:
    """Run the example ``name`` as a module (Litestar reads its handlers' module); its
    ``app``."""
    source = examples()[name].replace(DOC_URL, service.base_url)
    module = types.ModuleType(f"docs_clients_{name.replace('-', '_')}")
    sys.modules[module.__name__] = module
    try:
        exec(compile(source, f"{DOCS}:{name}", "exec"), module.__dict__)  # our own docs
        yield module.app
    finally:
        del sys.modules[module.__name__]


@pytest.fixture
def admin(service: ServiceProcess) -> Iterator[ThrottlerClient]:
    with ThrottlerClient(service.base_url, timeout=10) as client:
        yield client


def as_http(response: httpx.Response) -> str:
    """A response as ``curl -i`` prints it."""
    headers = "".join(f"{name}: {value}\n" for name, value in response.headers.items())
    return f"HTTP/1.1 {response.status_code} {response.reason_phrase}\n{headers}\n{response.text}"


def two_then_denied(app: Any, admin: ThrottlerClient, began: float) -> None:
    """The caller holds 2 requests a minute: 2 pass with headers, the third gets the
    documented 429."""
    for remaining in ("1", "0"):
        allowed = app.get("/hello")
        assert (allowed.status_code, allowed.json()) == (200, {"hello": "world"})
        assert allowed.headers["x-ratelimit-remaining"] == remaining
        assert allowed.headers["ratelimit-policy"] == '"token_bucket";q=2;w=60'
    denied = app.get("/hello")
    expected = [line for line in examples()["denied-answer"].splitlines() if line]
    elapsed_ms = (time.monotonic() - began) * 1000
    compare_http(as_http(denied), expected, elapsed_ms, "denied-answer")


@pytest.mark.parametrize("framework", ["litestar", "fastapi"])
def test_the_three_line_integrations(
    framework: str, service: ServiceProcess, admin: ThrottlerClient
) -> None:
    admin.set_limit(TEST_CLIENT_KEY, Limit(2, 60_000))
    try:
        began = time.monotonic()
        client = TestClient if framework == "litestar" else FastAPITestClient
        with app_of(framework, service) as app, client(app) as test_client:
            two_then_denied(test_client, admin, began)
    finally:
        admin.delete_limit(TEST_CLIENT_KEY)


def test_key_cost_and_the_guard(service: ServiceProcess, admin: ThrottlerClient) -> None:
    admin.set_limit("export:all", Limit(10, 86_400_000))
    with app_of("key-and-cost", service) as example, TestClient(example) as app:
        exempt = app.get("/items")
        assert (exempt.status_code, exempt.json()) == (200, ["a", "b"])
        assert "x-ratelimit-limit" not in exempt.headers
        keyed = app.get("/items", headers={"x-api-key": "k1"})
        assert keyed.headers["x-ratelimit-remaining"] == "99"  # the default limit
        started = app.post("/export", headers={"x-api-key": "k1"})
        assert (started.status_code, started.json()) == (201, {"export": "started"})
        assert started.headers["x-ratelimit-remaining"] == "94"  # a write costs 5
        again = app.post("/export", headers={"x-api-key": "k2"})  # the guard's shared key
        assert again.status_code == 429
        assert int(again.headers["retry-after"]) >= 1
    assert admin.peek("export:all").remaining == 0


@pytest.mark.parametrize("name", ["sync-client", "async-client", "spend", "errors", "fail-open"])
def test_the_client_examples(name: str, service: ServiceProcess) -> None:
    source = examples()[name].replace(DOC_URL, service.base_url)
    test = doctest.DocTestParser().get_doctest(source, {}, name, str(DOCS), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
    assert runner.tries >= 3


def test_the_curl_example(service: ServiceProcess) -> None:
    steps = steps_in(examples()["curl"])
    assert len(steps) == 4
    run_examples(service, steps)


def test_the_fetch_example(service: ServiceProcess, tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "the JavaScript example needs Node.js (18 or later) on PATH"
    script = tmp_path / "example.mjs"
    script.write_text(examples()["fetch"].replace(DOC_URL, service.base_url))
    done = subprocess.run(
        [node, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == examples()["fetch-output"].splitlines()
