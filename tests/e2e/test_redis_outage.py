"""Redis goes away while the service runs: /ready and checks answer 503 promptly, and both
recover when Redis is back, without restarting the service."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support.servers import RedisProcess
from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PROMPT_S = 1.5  # /ready must answer within a second; a little slack for the machine
NOT_READY = {"status": "not_ready", "redis": "disconnected"}
READY = {"status": "ready", "redis": "connected"}


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGCONT)  # in case a test left it paused
        server.close()


@pytest.fixture
def service(redis_server: RedisProcess, prefix: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        {"REDIS_URL": redis_server.url, "KEY_PREFIX": prefix, "WORKER_BLOCK_MS": "100"}
    )
    try:
        proc.start(tmp_path)
        yield proc
    finally:
        proc.stop()


def timed(http: httpx.Client, method: str, url: str, json: Any = None) -> httpx.Response:
    """The response; fails if it took longer than PROMPT_S."""
    began = time.monotonic()
    resp = http.request(method, url, json=json)
    took = time.monotonic() - began
    assert took < PROMPT_S, f"{method} {url} took {took:.2f}s"
    return resp


def assert_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == "redis_unavailable"
    assert int(resp.headers["retry-after"]) >= 1


def poll_until(http: httpx.Client, url: str, method: str, status: int, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        last = http.request(method, url)
        if last.status_code == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"{method} {url} still {last and last.status_code}: {last and last.text}")


def assert_down_answers(http: httpx.Client, base: str, key: str) -> None:
    """While Redis cannot answer: every Redis-backed route is a prompt 503."""
    for _ in range(3):  # not only the first request after the outage
        resp = timed(http, "GET", f"{base}/ready")
        assert (resp.status_code, resp.json()) == (503, NOT_READY)
    url = f"{base}/rate-limit/{key}"
    assert_unavailable(timed(http, "POST", f"{url}/check"))
    assert_unavailable(timed(http, "POST", f"{url}/check", json={"tokens": 2}))
    assert_unavailable(timed(http, "GET", url))
    assert_unavailable(timed(http, "POST", url, json={"requests": 5, "window_ms": 1000}))
    assert_unavailable(timed(http, "DELETE", url))
    # liveness does not depend on Redis: the process is alive and must not be restarted
    assert timed(http, "GET", f"{base}/health").status_code == 200


def test_redis_stopped_then_started_again(
    service: ServiceProcess, redis_server: RedisProcess
) -> None:
    base = service.base_url
    with httpx.Client(timeout=10) as http:
        created = http.post(f"{base}/rate-limit/k", json={"requests": 5, "window_ms": 60000})
        assert created.status_code == 201
        assert http.post(f"{base}/rate-limit/k/check").status_code == 200
        assert http.get(f"{base}/ready").json() == READY

        redis_server.stop()
        assert_down_answers(http, base, "k")

        redis_server.start()  # the same port, a fresh (empty) server
        poll_until(http, f"{base}/ready", "GET", 200, deadline_s=10)
        assert http.get(f"{base}/ready").json() == READY
        poll_until(http, f"{base}/rate-limit/k/check", "POST", 200, deadline_s=10)
        # the new server is empty: k is back on the default limit, and checks count again
        resp = http.post(f"{base}/rate-limit/k/check", json={"tokens": 0})
        assert (resp.status_code, resp.json()["limit"]) == (200, 100)
    assert service.proc is not None
    assert service.proc.poll() is None  # the same process throughout


def test_config_changes_recover_after_redis_restarts_empty(
    service: ServiceProcess, redis_server: RedisProcess
) -> None:
    """The in-process worker recreates its consumer groups on a server that lost them
    (restart without persistence, failover), so POST is applied again (201, not 202)."""
    base = service.base_url
    with httpx.Client(timeout=10) as http:
        assert (
            http.post(f"{base}/rate-limit/k", json={"requests": 2, "window_ms": 60000}).status_code
            == 201
        )
        redis_server.stop()
        assert_unavailable(timed(http, "POST", f"{base}/rate-limit/k/check"))
        redis_server.start()
        poll_until(http, f"{base}/ready", "GET", 200, deadline_s=10)
        # checks may stay 503 a little longer (the circuit breaker's cooldown)
        poll_until(http, f"{base}/rate-limit/probe/check", "POST", 200, deadline_s=10)
        limit = {"requests": 2, "window_ms": 60000}
        created = http.post(f"{base}/rate-limit/k2", json=limit)
        assert created.status_code == 201, created.text
        codes = [http.post(f"{base}/rate-limit/k2/check").status_code for _ in "abc"]
        assert codes == [200, 200, 429]


def test_redis_hanging_is_answered_within_a_second(
    service: ServiceProcess, redis_server: RedisProcess
) -> None:
    """A Redis that accepts connections but never answers (paused) must not hang requests."""
    base = service.base_url
    assert redis_server.proc is not None
    with httpx.Client(timeout=10) as http:
        created = http.post(f"{base}/rate-limit/kept", json={"requests": 5, "window_ms": 60000})
        assert created.status_code == 201
        assert http.post(f"{base}/rate-limit/kept/check").json()["remaining"] == 4

        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            # (commands already written to the paused server's socket may still run once it
            # resumes, so the mutations go to another key than the one checked below)
            assert_down_answers(http, base, "other")
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)

        poll_until(http, f"{base}/ready", "GET", 200, deadline_s=10)
        assert http.get(f"{base}/ready").json() == READY
        # the paused server kept its data: the limit and the spent token are still there
        state = http.get(f"{base}/rate-limit/kept")
        assert (state.status_code, state.json()["remaining"]) == (200, 4)
        after = http.post(f"{base}/rate-limit/kept/check")
        assert (after.status_code, after.json()["remaining"]) == (200, 3)
