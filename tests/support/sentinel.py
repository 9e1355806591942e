"""A real local Sentinel deployment: a primary, a replica and three Sentinels on loopback.

From the suite's server binary (redis-server, or Valkey with ``THROTTLER_TEST_SERVER=
valkey``) with ``--sentinel``. The data nodes and the Sentinels have passwords of their
own (the service must keep them apart). Failure detection is made short
(``down-after-milliseconds``), so that a SIGKILLed primary is replaced in seconds.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.support.servers import RedisProcess, server_binary

__all__ = ["LocalSentinel"]


@dataclass
class LocalSentinel:
    service: str = "throttler-primary"
    password: str = "node-secret"  # requirepass of the data nodes
    sentinel_password: str = "sentinel-secret"  # requirepass of the Sentinels
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    #: A folder with ca.crt, server.crt and server.key: every node speaks TLS only.
    tls: Path | None = None
    nodes: list[RedisProcess] = field(default_factory=list)
    sentinels: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``REDIS_URL`` for the service: the Sentinels, the service name, the nodes' password."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        if self.tls is None:
            return f"redis+sentinel://:{self.password}@{hosts}/{self.service}/0"
        ca = self.tls / "ca.crt"
        return f"rediss+sentinel://:{self.password}@{hosts}/{self.service}/0?ssl_ca_certs={ca}"

    @property
    def env(self) -> dict[str, str]:
        return {"REDIS_URL": self.url, "REDIS_SENTINEL_PASSWORD": self.sentinel_password}

    def _process(self, binary: str, extra: list[str], **options: Any) -> RedisProcess:
        proc = RedisProcess(binary=binary, **options)
        proc.extra = [*extra, *self._tls_args(proc.port)]
        proc.tls_ca = self.tls / "ca.crt" if self.tls else None
        return proc

    def _tls_args(self, port: int) -> list[str]:
        if self.tls is None:
            return []
        return [
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(self.tls / "server.crt"),
            "--tls-key-file", str(self.tls / "server.key"),
            "--tls-ca-cert-file", str(self.tls / "ca.crt"),
            "--tls-auth-clients", "no",
            "--tls-replication", "yes",
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> LocalSentinel:
        binary = server_binary()
        auth = ["--requirepass", self.password, "--masterauth", self.password]
        primary = self._process(binary, auth).start()
        self.nodes.append(primary)
        replica = self._process(binary, [*auth, "--replicaof", "127.0.0.1", str(primary.port)])
        self.nodes.append(replica.start())
        self._wait(timeout, "the replica in sync", lambda: self._linked(replica))
        for _ in range(3):
            workdir = Path(tempfile.mkdtemp(prefix="thr-sentinel-"))
            config = workdir / "sentinel.conf"
            config.write_text(
                f"sentinel monitor {self.service} 127.0.0.1 {primary.port} 2\n"
                f"sentinel auth-pass {self.service} {self.password}\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                f"requirepass {self.sentinel_password}\n"
                f"sentinel sentinel-pass {self.sentinel_password}\n"
            )
            sentinel = self._process(binary, ["--sentinel"], workdir=workdir, config=config)
            self.sentinels.append(sentinel.start())
        self._wait(timeout, "the Sentinels to see each other and the replica", self._watching)
        return self

    def primary_port(self) -> int | None:
        """The primary's port as every Sentinel that answers names it (None: they differ)."""
        ports = set()
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                host_port: Any = self._ask(sentinel, "get-master-addr-by-name", self.service)
                ports.add(int(host_port[1]))
        return ports.pop() if len(ports) == 1 else None

    def primary(self) -> RedisProcess:
        port = self.primary_port()
        found = [n for n in self.nodes if n.port == port]
        assert found, f"no node of ours is the primary (port {port})"
        return found[0]

    def replica(self) -> RedisProcess:
        primary = self.primary()
        return next(n for n in self.nodes if n is not primary)

    def synced(self) -> bool:
        """The replica of the current primary is linked and in sync."""
        return self._linked(self.replica())

    def client(self, node: RedisProcess, password: str | None = None) -> redis.Redis:
        tls: dict[str, Any] = {}
        if self.tls is not None:
            tls = {"ssl": True, "ssl_ca_certs": str(self.tls / "ca.crt")}
        secret = password or self.password
        return redis.Redis(port=node.port, password=secret, socket_timeout=5, **tls)

    def close(self) -> None:
        for proc in [*self.sentinels, *self.nodes]:
            proc.close()
        self.sentinels.clear()
        self.nodes.clear()

    # -- waiting ---------------------------------------------------------------------

    def _ask(self, sentinel: RedisProcess, *command: str) -> Any:
        with self.client(sentinel, self.sentinel_password) as client:
            return client.execute_command("SENTINEL", *command)

    def _linked(self, replica: RedisProcess) -> bool:
        with contextlib.suppress(redis.RedisError), self.client(replica) as client:
            info: Any = client.info("replication")
            return bool(info.get("master_link_status") == "up")
        return False

    def _watching(self) -> bool:
        for sentinel in self.sentinels:
            try:
                reply: Any = self._ask(sentinel, "master", self.service)
            except redis.RedisError:
                return False
            if int(reply[b"num-slaves"]) < 1 or int(reply[b"num-other-sentinels"]) < 2:
                return False
        return True

    @staticmethod
    def _wait(timeout: float, what: str, probe: Any) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
            time.sleep(0.05)
