"""Hostile input against a real `throttler serve` process: every request below is answered
with a 4xx and a JSON error body ``{"error", "message"}``; none is a 5xx, none hangs, and the
service serves normally afterwards.

The two exceptions are bytes the HTTP server itself refuses before the application sees the
request (a raw NUL or a non-ASCII byte in the request line): uvicorn answers those with its
own plain-text 400, which is still a 4xx.

A body must say ``Content-Type: application/json``: any other type (or none) is a 415
before the body is read, even when the bytes are JSON, so that a cross-site form or
``text/plain`` POST from a web page is never parsed (api.edge).
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
import pytest

from core.streams import EVENT_FIELD
from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import Iterator

    from litestar import Litestar
    from litestar.testing import AsyncTestClient
    from redis.asyncio import Redis

    from core.keys import KeySpace

MAX_BODY = 1024 * 1024  # MAX_BODY_BYTES of the service under test (the default)
JSON = {"Content-Type": "application/json"}
DEEP = 100_000  # levels of nesting


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str  # sent as written: percent-escapes stay escapes
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    status: int | None = None  # a particular 4xx, when there is one to expect
    error: str | None = None  # the expected "error" code


def case(id: str, method: str, path: str, body: bytes | None = None, **kw: object) -> object:
    return pytest.param(Case(id, method, path, body, **kw), id=id)  # type: ignore[arg-type]


def typed(content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type}


FORM, XML, TEXT = "application/x-www-form-urlencoded", "application/xml", "text/plain"
MULTI = "multipart/form-data; boundary=x"
MULTIPART = b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n"
NOT_JSON = "unsupported_media_type"
KEY_K = b'{"key":"k"},'
CHECK = "/rate-limit/hostile/check"
ACQUIRE = "/rate-limit/hostile/acquire"
RELEASE = "/rate-limit/hostile/release"
REFUND = "/rate-limit/hostile/refund"
LIMIT = "/rate-limit/hostile"
BIG_INT = str(2**64).encode()
HUGE_INT = b"9" * 400

CASES = [
    # --- size and depth
    case("body-too-large", "POST", CHECK, b"[" * (MAX_BODY + 1), status=413),
    case("limit-body-too-large", "POST", LIMIT, b" " * (MAX_BODY + 1), status=413),
    case("nested-arrays", "POST", CHECK, b"[" * DEEP, status=400),
    case("nested-objects", "POST", LIMIT, b'{"a":' * DEEP, status=400),
    case("nested-closed", "POST", CHECK, b"[" * 5000 + b"]" * 5000, status=400),
    case("batch-nested", "POST", "/check", b'{"checks":' + b"[" * DEEP, status=400),
    # --- numbers beyond 64 bits, and numbers that are not numbers
    case("tokens-2^64", "POST", CHECK, b'{"tokens": ' + BIG_INT + b"}", status=400),
    case("tokens-400-digits", "POST", CHECK, b'{"tokens": ' + HUGE_INT + b"}", status=400),
    case("tokens-below-int64", "POST", CHECK, b'{"tokens": -9223372036854775809}', status=400),
    case("tokens-1e400", "POST", CHECK, b'{"tokens": 1e400}', status=400),
    case("tokens-nan", "POST", CHECK, b'{"tokens": NaN}', status=400),
    case("tokens-float", "POST", CHECK, b'{"tokens": 1.5}', status=400),
    case("tokens-string", "POST", CHECK, b'{"tokens": "1"}', status=400),
    case("tokens-bool", "POST", CHECK, b'{"tokens": true}', status=400),
    case("requests-2^64", "POST", LIMIT, b'{"requests": ' + BIG_INT + b', "window_ms": 1}'),
    case("window-400-digits", "POST", LIMIT, b'{"requests": 1, "window_ms": ' + HUGE_INT + b"}"),
    case("burst-below", "POST", LIMIT, b'{"requests":1,"window_ms":1,"burst":-%s}' % BIG_INT),
    case("inline-2^64", "POST", CHECK, b'{"requests": ' + BIG_INT + b', "window_ms": 1000}'),
    case("batch-tokens-2^64", "POST", "/check", b'{"checks":[{"key":"a","tokens":%s}]}' % BIG_INT),
    case("count-2^64", "GET", "/dead-letters?count=" + BIG_INT.decode(), None, status=400),
    case("count-negative", "GET", "/dead-letters?count=-1", None, status=400),
    case("count-text", "GET", "/dead-letters?count=%FF", None, status=400),
    # --- bytes that are not UTF-8, and other encodings
    case("body-not-utf8", "POST", CHECK, b"\xff\xfe\xfd", status=400),
    case("string-not-utf8", "POST", CHECK, b'{"tokens": 1, "algorithm": "\xff"}', status=400),
    case("limit-not-utf8", "POST", LIMIT, b'{"requests":1,"window_ms":1,"algorithm":"\xc3\x28"}'),
    case("batch-key-not-utf8", "POST", "/check", b'{"checks":[{"key":"\xed\xa0\x80"}]}'),
    case("utf16-json", "POST", CHECK, '{"tokens": 1}'.encode("utf-16"), status=400),
    case("lone-surrogate", "POST", "/check", b'{"checks":[{"key":"\\ud800"}]}', status=400),
    # --- keys: unicode, percent-encoding, hash-tag and prefix breakers, NUL, length
    case("key-unicode-space", "POST", "/rate-limit/a%E2%80%83b/check", None, error="invalid_key"),
    case("key-unicode-limit", "POST", "/rate-limit/a%E2%80%83b", b'{"requests":1,"window_ms":1}'),
    case("key-encoded-slash", "POST", "/rate-limit/a%2Fb/check", error="invalid_key"),
    case("key-dot-dot", "POST", "/rate-limit/..%2F..%2Fhealth/check", error="invalid_key"),
    case("key-braces", "POST", "/rate-limit/a%7Bb%7D/check", None, error="invalid_key"),
    case("key-open-brace", "POST", "/rate-limit/%7B/check", None, error="invalid_key"),
    case("key-close-brace", "GET", "/rate-limit/%7D", None, error="invalid_key"),
    case("key-tag-suffix", "POST", "/rate-limit/x:%7Bx%7D/check", None, error="invalid_key"),
    case("key-stream-tag", "DELETE", "/rate-limit/%7Bthrottler%7D:config", None),
    case("key-nul", "POST", "/rate-limit/a%00b/check", None, error="invalid_key"),
    case("key-newline", "POST", "/rate-limit/a%0D%0Ab/check", None, error="invalid_key"),
    case("key-space", "GET", "/rate-limit/a%20b", None, error="invalid_key"),
    case("key-non-utf8-escape", "POST", "/rate-limit/%FF/check", None, error="invalid_key"),
    case("key-257", "POST", "/rate-limit/" + "k" * 257 + "/check", None, error="invalid_key"),
    case("key-5000", "GET", "/rate-limit/" + "k" * 5000, None, error="invalid_key"),
    case("batch-key-brace", "POST", "/check", b'{"checks":[{"key":"a{b}"}]}', status=400),
    case("batch-key-nul", "POST", "/check", b'{"checks":[{"key":"a\\u0000"}]}', status=400),
    case("batch-key-long", "POST", "/check", b'{"checks":[{"key":"' + b"k" * 300 + b'"}]}'),
    case("batch-too-many", "POST", "/check", b'{"checks":[%s{"key":"k"}]}' % (KEY_K * 1000)),
    case("batch-empty", "POST", "/check", b'{"checks":[]}', status=400),
    # --- NUL bytes and other junk in bodies
    case("nul-after-json", "POST", CHECK, b'{"tokens": 1}\x00', status=400),
    case("nul-in-json", "POST", CHECK, b"{\x00}", status=400),
    case("nul-in-algorithm", "POST", LIMIT, b'{"requests":1,"window_ms":1,"algorithm":"a\\u0000"}'),
    case("unknown-field", "POST", CHECK, b'{"tokens": 1, "admin": true}', status=400),
    case("array-body", "POST", CHECK, b"[]", status=400),
    case("string-body", "POST", LIMIT, b'"requests"', status=400),
    case("null-limit", "POST", LIMIT, b"null", status=400),
    case("empty-limit", "POST", LIMIT, b"", status=400),
    case("truncated", "POST", LIMIT, b'{"requests": 1, "window_ms"', status=400),
    # --- wrong Content-Type (bodies that are not JSON)
    case("form", "POST", CHECK, b"tokens=1", headers=typed(FORM), status=415, error=NOT_JSON),
    case("multipart", "POST", LIMIT, MULTIPART, headers=typed(MULTI), status=415, error=NOT_JSON),
    case("xml", "POST", LIMIT, b"<limit r='1'/>", headers=typed(XML), status=415, error=NOT_JSON),
    case("text", "POST", "/check", b"check all", headers=typed(TEXT), status=415, error=NOT_JSON),
    # --- spend primitives: acquire, release, refund, reserved waits
    case("acquire-array", "POST", ACQUIRE, b"[]", status=400),
    case("acquire-ttl-0", "POST", ACQUIRE, b'{"ttl_ms": 0}', status=400),
    case("acquire-ttl-2^64", "POST", ACQUIRE, b'{"ttl_ms": ' + BIG_INT + b"}", status=400),
    case("acquire-ttl-string", "POST", ACQUIRE, b'{"ttl_ms": "5"}', status=400),
    case("acquire-ttl-float", "POST", ACQUIRE, b'{"ttl_ms": 1.5}', status=400),
    case("acquire-unknown", "POST", ACQUIRE, b'{"lease": "x"}', status=400),
    case("acquire-bad-key", "POST", "/rate-limit/a%7Bb/acquire", None, error="invalid_key"),
    case("release-empty", "POST", RELEASE, b"", status=400),
    case("release-no-lease", "POST", RELEASE, b"{}", status=400),
    case("release-null", "POST", RELEASE, b"null", status=400),
    case("release-number", "POST", RELEASE, b'{"lease": 5}', status=400),
    case("release-space", "POST", RELEASE, b'{"lease": "a b"}', status=400),
    case("release-nul", "POST", RELEASE, b'{"lease": "a\\u0000"}', status=400),
    case("release-long", "POST", RELEASE, b'{"lease": "' + b"a" * 65 + b'"}', status=400),
    case("release-deep", "POST", RELEASE, b"[" * DEEP, status=400),
    case("refund-empty", "POST", REFUND, b"", status=400),
    case("refund-0", "POST", REFUND, b'{"tokens": 0}', status=400),
    case("refund-negative", "POST", REFUND, b'{"tokens": -5}', status=400),
    case("refund-2^64", "POST", REFUND, b'{"tokens": ' + BIG_INT + b"}", status=400),
    case("refund-huge", "POST", REFUND, b'{"tokens": ' + HUGE_INT + b"}", status=400),
    case("refund-float", "POST", REFUND, b'{"tokens": 2.5}', status=400),
    case("refund-nan", "POST", REFUND, b'{"tokens": NaN}', status=400),
    case("refund-form", "POST", REFUND, b"t=1", headers=typed(FORM), status=415, error=NOT_JSON),
    case("wait-negative", "POST", CHECK, b'{"max_wait_ms": -1}', status=400),
    case("wait-2^64", "POST", CHECK, b'{"max_wait_ms": ' + BIG_INT + b"}", status=400),
    case("wait-string", "POST", CHECK, b'{"max_wait_ms": "10"}', status=400),
    # --- methods and routes that do not exist
    case("method", "PUT", LIMIT, b"{}", status=405, error="method_not_allowed"),
    case("no-route", "GET", "/rate-limit/k/x", None, status=404, error="not_found"),
]  # fmt: skip


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        "MAX_BODY_BYTES": str(MAX_BODY),
        "WORKER_BLOCK_MS": "100",
        "WORKER_METRICS_PORT": "0",
    }
    proc = ServiceProcess(env)
    try:
        yield proc.start(tmp_path_factory.mktemp("hostile"))
        assert "unhandled error" not in proc.log()  # no request reached the 500 handler
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def http(service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.base_url, timeout=10) as client:
        yield client


def assert_json_4xx(resp: httpx.Response) -> None:
    assert 400 <= resp.status_code < 500, f"{resp.status_code}: {resp.text[:300]}"
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error", "message"}, body
    assert isinstance(body["error"], str)
    assert isinstance(body["message"], str)


@pytest.mark.parametrize("case", CASES)
def test_hostile_request_gets_a_json_4xx(http: httpx.Client, case: Case) -> None:
    resp = http.request(case.method, case.path, content=case.body, headers=case.headers)
    assert_json_4xx(resp)
    if case.status is not None:
        assert resp.status_code == case.status, resp.text[:300]
    if case.error is not None:
        assert resp.json()["error"] == case.error, resp.text[:300]
    if resp.status_code == 413:
        assert resp.json()["error"] == "payload_too_large"


def test_a_header_that_breaks_http_is_a_400_from_the_parser(http: httpx.Client) -> None:
    """Control bytes in a header are not HTTP: the server's parser (httptools) answers 400
    itself, before any route (so not in the API's JSON format), and never a 5xx."""
    resp = http.post(CHECK, content=b"\x00\x01", headers=typed("\x7f/\x7f"))
    assert resp.status_code == 400
    assert resp.headers.get("connection") == "close"


@pytest.mark.parametrize("dead_id", ["abc", "%00", "1-2-3", "99999999999999999999999-1"])
@pytest.mark.anyio
async def test_replaying_a_malformed_dead_letter_id_is_a_404(
    client: AsyncTestClient[Litestar], dead_id: str
) -> None:
    # (in-process, so that the 500s of the bug do not land in the service's log above)
    resp = await client.post(f"/dead-letters/{dead_id}/replay")
    assert_json_4xx(resp)
    assert resp.status_code == 404


@pytest.mark.anyio
async def test_replaying_a_bare_millisecond_replays_nothing(
    client: AsyncTestClient[Litestar], redis: Redis, keys: KeySpace
) -> None:
    """XRANGE reads an id without its sequence number as a whole millisecond: the replay of
    ``<ms>`` must not replay ``<ms>-0`` and ``<ms>-1``."""
    letter: dict[str | bytes, bytes] = {
        EVENT_FIELD: b'{"config_id":"1-1","reason":"r","fields":{"event":"{}"},'
        b'"deliveries":1,"dead_at_ms":1,"worker":"w"}'
    }
    for seq in (0, 1):
        await redis.xadd(keys.dead_stream, letter, id=f"1700000000000-{seq}")  # type: ignore[arg-type]
    resp = await client.post("/dead-letters/1700000000000/replay")
    assert resp.status_code == 404, resp.text
    assert await redis.xlen(keys.dead_stream) == 2


def test_chunked_body_too_large_is_refused(service: ServiceProcess) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"[" * 1024

    with httpx.Client(base_url=service.base_url, timeout=10) as client:
        resp = client.post(CHECK, content=chunks(), headers=JSON)  # Transfer-Encoding: chunked
    assert_json_4xx(resp)
    assert resp.status_code == 413


def test_json_under_a_wrong_content_type_is_refused(http: httpx.Client) -> None:
    """A cross-site page can send these without a preflight: they are never parsed."""
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"Content-Type": content_type} if content_type else {}
        resp = http.post(CHECK, content=b'{"tokens": 0}', headers=headers)
        assert resp.status_code == 415, resp.text
        assert resp.json()["error"] == "unsupported_media_type"


def raw_request(service: ServiceProcess, request: bytes) -> bytes:
    """Send bytes as they are; the reply up to the end of its head (bounded by a timeout)."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    return reply


@pytest.mark.parametrize(
    "target",
    [b"/rate-limit/\xff/check", b"/rate-limit/a\x00b/check", b"/rate-limit/a b/check"],
    ids=["non-ascii-byte", "nul-byte", "space"],
)
def test_bytes_the_http_server_refuses_are_a_400(service: ServiceProcess, target: bytes) -> None:
    reply = raw_request(service, b"POST " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    status = reply.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 400"), reply[:200]


def test_the_service_serves_normally_afterwards(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    assert http.get("/ready").status_code == 200
    created = http.post("/rate-limit/after-hostile", json={"requests": 2, "window_ms": 60000})
    assert created.status_code == 201, created.text
    codes = [http.post("/rate-limit/after-hostile/check").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    # none of the hostile keys left anything behind under a valid key
    assert http.get("/rate-limit/hostile").json()["source"] == "default"
