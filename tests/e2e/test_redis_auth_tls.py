"""`throttler serve` and `throttler worker` on a Redis that wants credentials or TLS:

* a password (``requirepass``): works, and the password never reaches the logs;
* an ACL user allowed exactly the commands, keys and channel the service uses (the set
  documented in docs/operations.md, "Security"): the whole system works through it and
  Redis logs no denial;
* TLS (``rediss://``, a CA and a server certificate made here with the `openssl` CLI),
  when the local redis-server has TLS; skipped when it was built without.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import pytest
from redis import Redis
from redis.exceptions import NoPermissionError, ResponseError

from core.embedded import free_port
from core.keys import KeySpace
from tests.support.servers import RedisProcess, server_binary
from tests.support.service import ServiceProcess
from tests.support.tls import make_certificates

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# A password with characters that must be percent-encoded in a URL.
PASSWORD = f"p@ss:w/rd%{uuid.uuid4().hex[:8]}"
ADMIN_PASSWORD = f"admin-{uuid.uuid4().hex}"
LIMIT = {"requests": 3, "window_ms": 60000}
ALGORITHMS = ("token_bucket", "sliding_window", "fixed_window", "gcra")

#: Every command the service, its workers and its CLI send, Lua scripts' calls included.
ACL_COMMANDS = [
    *("ping", "time"),  # probes; TIME in the scripts (AUTH and HELLO need no grant)
    *("eval", "evalsha"),  # the scripts (EVAL after NOSCRIPT)
    *("get", "set", "del", "exists", "scan"),  # heartbeats, worker --check
    *("hget", "hmget", "hgetall", "hkeys", "hset", "hdel"),  # limits and their state
    *("persist", "pexpire", "pttl"),  # TTLs of state and tombstones
    *("zadd", "zcard", "zcount", "zrange", "zremrangebyrank"),  # the sliding-window log
    *("xadd", "xack", "xdel", "xlen", "xrange", "xreadgroup", "xautoclaim", "xpending"),
    *("xgroup|create", "xinfo|groups"),  # streams: groups, metrics
    *("publish", "subscribe"),  # notifications
]


#: Redis >= 7.2 and Valkey know CLIENT SETINFO, which redis-py sends on every connection to
#: announce itself; refused, it is harmless but fills ACL LOG. (Redis 7.0 refuses the rule.)
SETINFO = "client|setinfo"


def knows_setinfo(admin: Redis) -> bool:
    command: Any = admin.execute_command
    try:
        command("ACL", "SETUSER", "throttler-probe", f"+{SETINFO}")
    except ResponseError:
        return False
    command("ACL", "DELUSER", "throttler-probe")
    return True


def acl_rules(prefix: str, password: str, *, setinfo: bool = False) -> list[str]:
    """ACL SETUSER rules for a service whose KEY_PREFIX is ``prefix``."""
    keys = KeySpace(prefix)
    extra = [f"+{SETINFO}"] if setinfo else []
    return [
        "on",
        f">{password}",
        "resetkeys",
        f"~{prefix}:*",  # limits ({key} tagged), algorithm state, worker heartbeats
        f"~{{{prefix}}}:*",  # the config, audit and dead-letter streams
        "resetchannels",
        f"&{keys.notify_channel}",
        "-@all",
        *(f"+{command}" for command in ACL_COMMANDS),
        *extra,
    ]


def setuser(admin: Redis, prefix: str, password: str) -> None:
    command: Any = admin.execute_command
    rules = acl_rules(prefix, password, setinfo=knows_setinfo(admin))
    command("ACL", "SETUSER", "throttler", *rules)


def url(port: int, *, user: str = "", password: str = "", scheme: str = "redis") -> str:
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if password else ""
    return f"{scheme}://{auth}127.0.0.1:{port}/0"


def service(env: dict[str, str], args: list[str] | None = None) -> ServiceProcess:
    base = {"WORKER_METRICS_PORT": "0", "WORKER_BLOCK_MS": "100", "LOG_LEVEL": "debug"}
    return ServiceProcess({**base, **env}, args or ["serve"])


def exercise(base_url: str, key: str) -> None:
    """Limits set (applied by a worker, announced over Pub/Sub), checked, read, deleted."""
    with httpx.Client(base_url=base_url, timeout=10) as http:
        assert http.get("/ready").status_code == 200
        created = http.post(f"/rate-limit/{key}", json=LIMIT)
        assert created.status_code == 201, created.text  # 202 would mean: never applied
        codes = [http.post(f"/rate-limit/{key}/check").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert http.get(f"/rate-limit/{key}").json()["remaining"] == 0
        assert http.delete(f"/rate-limit/{key}").status_code == 200
        assert http.get(f"/rate-limit/{key}").json()["source"] == "default"


def assert_unavailable(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        assert http.get("/ready").status_code == 503
        resp = http.post("/rate-limit/k/check")
        assert (resp.status_code, resp.json()["error"]) == (503, "redis_unavailable")


# --- password ---------------------------------------------------------------------------


@pytest.fixture
def password_redis() -> Iterator[RedisProcess]:
    server = RedisProcess(extra=["--requirepass", PASSWORD]).start()
    try:
        yield server
    finally:
        server.close()


def test_password_protected_redis(
    password_redis: RedisProcess, prefix: str, tmp_path: Path
) -> None:
    good = service({"REDIS_URL": url(password_redis.port, password=PASSWORD), "KEY_PREFIX": prefix})
    wrong = f"wrong-{uuid.uuid4().hex}"
    bad = service({"REDIS_URL": url(password_redis.port, password=wrong), "KEY_PREFIX": prefix})
    try:
        good.start(tmp_path)
        bad.start(tmp_path)
        exercise(good.base_url, "pw")
        assert_unavailable(bad.base_url)
    finally:
        good.stop()
        bad.stop()
    assert "using redis at redis://:***@127.0.0.1" in good.log()
    for log in (good.log(), bad.log()):
        for secret in (PASSWORD, quote(PASSWORD, safe=""), wrong):
            assert secret not in log


# --- ACL user ---------------------------------------------------------------------------


@pytest.fixture
def acl_redis() -> Iterator[RedisProcess]:
    server = RedisProcess(extra=["--requirepass", ADMIN_PASSWORD]).start()
    try:
        yield server
    finally:
        server.close()


def test_acl_user_with_the_documented_command_set(
    acl_redis: RedisProcess, prefix: str, tmp_path: Path
) -> None:
    admin = Redis(port=acl_redis.port, password=ADMIN_PASSWORD)
    user_password = uuid.uuid4().hex
    admin.acl_setuser("throttler", reset=True)
    setuser(admin, prefix, user_password)
    keys = KeySpace(prefix)
    env = {
        "REDIS_URL": url(acl_redis.port, user="throttler", password=user_password),
        "KEY_PREFIX": prefix,
        "WORKER_CLAIM_IDLE_MS": "100",
        "WORKER_CLAIM_INTERVAL_MS": "200",
    }
    # Before any worker: an entry another consumer read and never acked (to be reclaimed),
    # and one that is not a valid event (to be dead-lettered).
    admin.xgroup_create(keys.config_stream, "appliers", id="0", mkstream=True)
    ghost_event = (
        b'{"type":"set_limit","key":"ghost","limit":{"requests":1,"window_ms":1000},'
        b'"actor":"test","request_id":"r1","submitted_at_ms":1}'
    )
    admin.xadd(keys.config_stream, {"event": ghost_event})
    admin.xreadgroup("appliers", "ghost-consumer", {keys.config_stream: ">"})
    admin.xadd(keys.config_stream, {"junk": "1"})

    api = service(env, ["serve", "--no-worker"])
    worker = service(env, ["worker", "--consumer", "acl-worker"])
    try:
        api.start(tmp_path)
        worker.start(tmp_path, wait=False)
        base = api.base_url
        with (
            httpx.Client(base_url=base, timeout=10) as http,
            httpx.Client(base_url=base, timeout=10) as listener,
            listener.stream("GET", "/notifications", params={"prefix": "acl-"}) as stream,
        ):
            lines = stream.iter_lines()
            assert next(lines) == "event: subscribed"
            for algorithm in ALGORITHMS:
                key = f"acl-{algorithm}"
                limit = {**LIMIT, "algorithm": algorithm}
                assert http.post(f"/rate-limit/{key}", json=limit).status_code == 201
                assert http.post(f"/rate-limit/{key}/check").status_code == 200
                assert http.get(f"/rate-limit/{key}").status_code == 200
                inline = http.post(f"/rate-limit/inline-{algorithm}/check", json=limit)
                assert inline.status_code == 200, inline.text
            admin.script_flush()  # the next check meets NOSCRIPT: EVAL runs it
            assert http.post("/rate-limit/acl-gcra/check").status_code == 200
            batch = {"checks": [{"key": "acl-gcra"}, {"key": "acl-other"}]}
            assert http.post("/check", json=batch).status_code == 200
            assert http.delete("/rate-limit/acl-gcra").status_code == 200
            assert any(line.startswith("event: limit_changed") for line in _take(lines, 20))
            assert http.get("/rate-limit/ghost").status_code == 200  # reclaimed and applied
            dead = http.get("/dead-letters").json()
            assert len(dead) == 1, dead
            replayed = http.post(f"/dead-letters/{dead[0]['id']}/replay")
            assert replayed.status_code == 200, replayed.text
            assert http.get("/metrics").status_code == 200
            assert http.get("/ready").status_code == 200
        probe = subprocess.run(
            [*_throttler(), "worker", "--check", "--consumer", "acl-worker"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert probe.returncode == 0, probe.stdout + probe.stderr
        # without --consumer: any live worker of this host (a SCAN of heartbeat keys)
        host_probe = subprocess.run(
            [*_throttler(), "worker", "--check"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert "unavailable" not in host_probe.stdout, host_probe.stdout + host_probe.stderr
        assert worker.stop() == 0
    finally:
        api.stop()
        worker.stop()
    denied: Any = admin.acl_log()
    admin.close()
    assert denied == [], denied
    for log in (api.log(), worker.log()):
        assert "NOPERM" not in log
        assert user_password not in log


def test_the_acl_user_can_do_nothing_else(acl_redis: RedisProcess, prefix: str) -> None:
    admin = Redis(port=acl_redis.port, password=ADMIN_PASSWORD)
    password = uuid.uuid4().hex
    setuser(admin, prefix, password)
    admin.close()
    user = Redis(port=acl_redis.port, username="throttler", password=password)
    try:
        user.set(f"{prefix}:{{k}}:st", "1")  # its own keys: yes
        for forbidden in (
            lambda: user.get("someone-else:key"),
            user.flushall,
            lambda: user.config_get("dir"),
            lambda: user.keys("*"),
            user.script_flush,
            lambda: user.publish("other-channel", "x"),
            user.client_list,
        ):
            with pytest.raises(NoPermissionError):
                forbidden()
    finally:
        user.close()


def _take(lines: Iterator[str], count: int) -> list[str]:
    return [next(lines) for _ in range(count)]


def _throttler() -> list[str]:
    return [sys.executable, "-m", "throttler"]


# --- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, and a certificate it signed for 127.0.0.1 / localhost."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


NO_TLS = ("Failed finding TLS support", "TLS not supported", "connection type tls")


class TlsRedis:
    """redis-server with TLS only (``--port 0``), started and stopped by pid."""

    def __init__(self, certs: Path, workdir: Path) -> None:
        self.port = free_port()
        self.certs = certs
        self.log = workdir / f"redis-tls-{self.port}.log"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> TlsRedis:
        args = [
            server_binary(),
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.certs / "server.crt"),
            "--tls-key-file", str(self.certs / "server.key"),
            "--tls-ca-cert-file", str(self.certs / "ca.crt"),
            "--tls-auth-clients", "no",
            "--requirepass", PASSWORD,
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        context = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log.read_text(errors="replace")
                if any(marker in text for marker in NO_TLS):
                    pytest.skip(f"{server_binary()} has no TLS support: {text[-200:]}")
                raise AssertionError(f"TLS redis-server exited at start:\n{text}")
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw,
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
                ):
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"-NOAUTH"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError("TLS redis-server did not answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def tls_redis(certificates: Path, tmp_path: Path) -> Iterator[TlsRedis]:
    server = TlsRedis(certificates, tmp_path)
    try:
        yield server.start()
    finally:
        server.stop()


def test_tls_redis(tls_redis: TlsRedis, certificates: Path, prefix: str, tmp_path: Path) -> None:
    ca = certificates / "ca.crt"
    secure = url(tls_redis.port, password=PASSWORD, scheme="rediss") + f"?ssl_ca_certs={ca}"
    good = service({"REDIS_URL": secure, "KEY_PREFIX": prefix})
    # Without the CA the server's certificate is not trusted; plain text is not spoken.
    untrusted = url(tls_redis.port, password=PASSWORD, scheme="rediss")
    plain = url(tls_redis.port, password=PASSWORD)
    refused = [service({"REDIS_URL": u, "KEY_PREFIX": prefix}) for u in (untrusted, plain)]
    try:
        good.start(tmp_path)
        for proc in refused:
            proc.start(tmp_path)
        exercise(good.base_url, "tls")
        for proc in refused:
            assert_unavailable(proc.base_url)
    finally:
        good.stop()
        for proc in refused:
            proc.stop()
    assert "using redis at rediss://:***@127.0.0.1" in good.log()
    assert PASSWORD not in good.log()
    assert "certificate verify failed" in refused[0].log() or "CERTIFICATE" in refused[0].log()
