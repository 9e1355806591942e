"""What docs/api.md says about running the service is true of `throttler serve`."""

from __future__ import annotations

import json
from importlib.metadata import requires
from pathlib import Path

import httpx
from websockets.sync.client import connect

from tests.support.service import ServiceProcess

API_DOCS = " ".join((Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text().split())
LIMIT = {"requests": 10, "window_ms": 60000}


def test_websockets_work_out_of_the_box(redis_url: str, prefix: str, tmp_path: Path) -> None:
    assert any(r.startswith("websockets") for r in requires("throttler") or [])
    assert "neither is among Throttler's dependencies" not in API_DOCS
    assert "accepts WebSocket upgrades out of the box" in API_DOCS
    service = ServiceProcess({"REDIS_URL": redis_url, "KEY_PREFIX": prefix}).start(tmp_path)
    try:
        url = service.base_url.replace("http://", "ws://") + "/notifications/ws?prefix=x"
        with connect(url) as socket:
            assert json.loads(socket.recv(timeout=10)) == {"type": "subscribed", "prefix": "x"}
    finally:
        service.stop()


def test_limits_on_the_embedded_server_are_gone_after_a_restart(tmp_path: Path) -> None:
    assert "Limits live in Redis and survive restarts of the service." not in API_DOCS
    assert "keeps nothing on disk, so its limits are gone when `make run` stops" in API_DOCS
    first = ServiceProcess({}, embedded=True).start(tmp_path)
    try:
        created = httpx.post(f"{first.base_url}/rate-limit/kept:1", json=LIMIT, timeout=10)
        assert created.status_code == 201, created.text
    finally:
        first.stop()
    second = ServiceProcess({}, embedded=True).start(tmp_path)
    try:
        assert (
            httpx.get(f"{second.base_url}/rate-limit/kept:1", timeout=10).json()["source"]
            == "default"
        )
    finally:
        second.stop()
