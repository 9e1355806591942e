"""Who reads the OpenAPI document, against a real `throttler serve`: the docs UI (every
asset from the server itself, nothing from a CDN) and a client generated from the document
by openapi-python-client."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import Iterator

ADMIN, CHECKER = "admin-token-0123456789abcdef0123456789", "check-token-0123456789abcdef0123456789"
REFERENCES = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        "WORKER_METRICS_PORT": "0",
        "ADMIN_TOKEN": ADMIN,
        "CHECK_TOKEN": CHECKER,
    }
    proc = ServiceProcess(env).start(tmp_path_factory.mktemp("openapi"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize("page", ["/schema", "/schema/swagger"])
def test_the_docs_ui_needs_nothing_but_the_server(service: ServiceProcess, page: str) -> None:
    with httpx.Client(base_url=service.base_url, timeout=10) as web:
        html = web.get(page)
        assert html.status_code == 200
        assert html.headers["content-type"].startswith("text/html")
        assets = REFERENCES.findall(html.text)
        assert len(assets) >= 4, assets  # css, two scripts, an icon
        assert "SwaggerUIBundle" in html.text
        for asset in assets:
            assert asset.startswith("/schema/"), f"{asset} does not come from the server"
            fetched = web.get(asset)
            assert fetched.status_code == 200, asset
            assert len(fetched.content) > 100, asset
        assert "https://" not in "".join(assets)


def _generate(document_url: str, where: Path) -> Any:
    """Generate the client package into ``where`` and import it."""
    (where / "openapi.json").write_bytes(httpx.get(document_url).content)
    tools = str(Path(sys.executable).parent)  # the generator formats its output with ruff
    done = subprocess.run(
        [
            str(Path(tools) / "openapi-python-client"),
            "generate",
            "--path",
            "openapi.json",
            "--meta",
            "none",
            "--output-path",
            str(where / "generated_api_client"),
        ],
        cwd=where,
        env={**os.environ, "PATH": f"{tools}:{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(where))
    try:
        return importlib.import_module("generated_api_client")
    finally:
        sys.path.remove(str(where))


def test_a_generated_client_works(service: ServiceProcess, tmp_path: Path) -> None:
    client_pkg = _generate(f"{service.base_url}/schema/openapi.json", tmp_path)
    with contextlib.ExitStack() as stack:
        admin = stack.enter_context(client_pkg.AuthenticatedClient(service.base_url, token=ADMIN))
        checker = stack.enter_context(
            client_pkg.AuthenticatedClient(service.base_url, token=CHECKER)
        )
        anonymous = stack.enter_context(client_pkg.Client(base_url=service.base_url))
        use_the_client(admin, checker, anonymous)


def use_the_client(admin: Any, checker: Any, anonymous: Any) -> None:
    api = importlib.import_module("generated_api_client.api.limits.set_limit")
    get_limit = importlib.import_module("generated_api_client.api.limits.get_limit")
    delete_limit = importlib.import_module("generated_api_client.api.limits.delete_limit")
    check = importlib.import_module("generated_api_client.api.checks.check")
    check_many = importlib.import_module("generated_api_client.api.checks.check_many")
    ticket = importlib.import_module("generated_api_client.api.notifications.notification_ticket")
    health = importlib.import_module("generated_api_client.api.probes.health")
    models = importlib.import_module("generated_api_client.models")

    limit = models.Limit(requests=3, window_ms=60_000)
    created = api.sync_detailed("gen:client-1", client=admin, body=limit)
    assert created.status_code == 201
    assert (created.parsed.requests, created.parsed.burst) == (3, 3)
    assert created.parsed.algorithm == models.LimitAlgorithm.TOKEN_BUCKET

    allowed = check.sync_detailed(
        "gen:client-1", client=checker, body=models.CheckRequest(tokens=2)
    )
    assert allowed.status_code == 200
    assert isinstance(allowed.parsed, models.CheckAllowed)
    assert allowed.parsed.remaining == 1
    assert allowed.headers["x-ratelimit-remaining"] == "1"
    denied = check.sync_detailed("gen:client-1", client=checker, body=models.CheckRequest(tokens=2))
    assert denied.status_code == 429
    assert isinstance(denied.parsed, models.CheckDenied)
    assert int(denied.headers["retry-after"]) >= 1

    status = get_limit.sync("gen:client-1", client=admin)
    assert (status.key, status.remaining, status.limit) == ("gen:client-1", 1, 3)
    batch = check_many.sync(
        client=checker,
        body=models.BatchRequest(checks=[models.BatchItem(key="gen:client-1", tokens=1)]),
    )
    assert batch.allowed is True
    assert batch.results[0].remaining == 0

    bad = api.sync_detailed("bad key", client=admin, body=limit)
    assert bad.status_code == 400
    assert bad.parsed.error == "invalid_key"
    refused = get_limit.sync_detailed("gen:client-1", client=anonymous)
    assert refused.status_code == 401
    assert refused.parsed.error == "unauthorized"

    issued = ticket.sync(client=admin)
    assert issued.expires_in_ms > 0
    assert issued.ticket
    assert health.sync(client=anonymous).status == "healthy"
    removed = delete_limit.sync_detailed("gen:client-1", client=admin)
    assert removed.status_code == 200
    assert removed.parsed.requests == 3
