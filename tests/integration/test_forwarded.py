"""Who the audit trail says made a change: the peer's address unless the request came
through a proxy in TRUSTED_PROXIES (X-Forwarded-For from anyone else is ignored, so it
cannot forge the actor or dodge the per-address limits), and the credential it used."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import httpx
import redis

from core.keys import KeySpace
from core.streams import EVENT_FIELD
from schemas.events import config_event_decoder
from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from pathlib import Path

ADMIN = f"adm-{uuid.uuid4().hex}"
SPOOFED = {"X-Forwarded-For": "10.9.9.9"}


def last_actor(redis_url: str, prefix: str) -> str:
    client = redis.Redis.from_url(redis_url)
    try:
        rows: Any = client.xrevrange(KeySpace(prefix).config_stream, count=1)
    finally:
        client.close()
    return str(config_event_decoder.decode(rows[0][1][EVENT_FIELD.encode()]).actor)


def change(service: ServiceProcess, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=service.base_url, timeout=10) as http:
        limit = {"requests": 5, "window_ms": 60_000}
        resp = http.post("/rate-limit/audited", json=limit, headers=headers)
        assert resp.status_code in (200, 201, 202), resp.text


def test_forwarded_for_is_ignored_by_default(redis_url: str, prefix: str, tmp_path: Path) -> None:
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "WORKER_METRICS_PORT": "0"}
    service = ServiceProcess(env).start(tmp_path)
    try:
        change(service, SPOOFED)
    finally:
        service.stop()
    assert last_actor(redis_url, prefix) == "http:127.0.0.1 (no token)"


def test_a_trusted_proxy_names_the_client(redis_url: str, prefix: str, tmp_path: Path) -> None:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "WORKER_METRICS_PORT": "0",
        "TRUSTED_PROXIES": "127.0.0.0/8",
        "ADMIN_TOKEN": ADMIN,
    }
    service = ServiceProcess(env).start(tmp_path)
    try:
        change(service, {**SPOOFED, "Authorization": f"Bearer {ADMIN}"})
    finally:
        service.stop()
    assert last_actor(redis_url, prefix) == "http:10.9.9.9 (admin token)"
