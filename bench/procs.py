"""Processes the benchmark starts, each stopped by its pid (and its children's), always.

Every process is started in a session of its own, so a Ctrl-C in the terminal reaches only
the benchmark, which then stops what it started: SIGTERM, a bounded wait, SIGKILL. The
children a server forked (uvicorn or granian workers) are found through ``/proc`` before
the parent is stopped and are stopped by pid as well if they outlive it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.embedded import find_server_binary, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import FrameType

__all__ = [
    "ROOT",
    "ApiServer",
    "BenchError",
    "Managed",
    "ProcessSet",
    "RedisServer",
    "descendants",
    "http_call",
    "http_exchange",
    "interrupts_as_exceptions",
    "service_env",
]

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent  # the repository: `python -m bench...` works here


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process did not start, a tool failed)."""


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    # fields after the command: state ppid pgrp ... starttime is field 22 (index 19 here)
    return int(rest[1]), int(rest[19])


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        info = _stat(int(entry.name))
        if info is not None:
            parents.setdefault(info[0], []).append((int(entry.name), info[1]))
    found: list[tuple[int, int]] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _alive(pid: int, started: int) -> bool:
    info = _stat(pid)
    return info is not None and info[1] == started


def _signal(pid: int, started: int, sig: int) -> None:
    if _alive(pid, started):  # never signal a recycled pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass
class Managed:
    """One process started by the benchmark."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.running():
            self.proc.send_signal(sig)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace``, SIGKILL; then the same for leftover children."""
        children = descendants(self.pid) if self.running() else []
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        else:
            self.proc.wait()
        deadline = time.monotonic() + grace
        for pid, started in children:
            _signal(pid, started, signal.SIGTERM)
        while time.monotonic() < deadline and any(_alive(p, s) for p, s in children):
            time.sleep(0.05)
        for pid, started in children:
            _signal(pid, started, signal.SIGKILL)


@dataclass
class ProcessSet:
    """Everything started, stopped in reverse order by :meth:`stop_all`."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="throttler-bench-")))
    started: list[Managed] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Managed:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                list(argv),
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,
            )
        managed = Managed(name, proc, log_path)
        self.started.append(managed)
        return managed

    def stop(self, managed: Managed) -> None:
        managed.stop()
        if managed in self.started:
            self.started.remove(managed)

    def stop_all(self) -> None:
        while self.started:
            managed = self.started.pop()
            try:
                managed.stop()
            except Exception as exc:  # keep stopping the others
                print(f"bench: could not stop {managed.name} (pid {managed.pid}): {exc}")

    def cleanup(self) -> None:
        self.stop_all()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so ``finally`` blocks stop everything."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def service_env(redis_url: str) -> dict[str, str]:
    """The environment of every throttler process: the bench Redis, quiet logs, defaults.

    Settings a developer's shell or ``.env`` may hold are pinned (an empty value counts as
    unset), so every run measures the same configuration.
    """
    return {
        "REDIS_URL": redis_url,
        "REDIS_CLUSTER": "false",
        "LOG_LEVEL": "warning",
        "KEY_PREFIX": "throttler",
        "DEFAULT_CAPACITY": "100",
        "DEFAULT_REFILL_RATE": "10",
        "FAILURE_POLICY": "closed",
        "ADMIN_TOKEN": "",
        "CHECK_TOKEN": "",
        "OTEL_SDK_DISABLED": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
    }


def http_call(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """One blocking HTTP request to the service on loopback (setup calls, probes)."""
    status, answer, _ = http_exchange(port, method, path, body, timeout)
    return status, answer


def http_exchange(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes, list[tuple[str, str]]]:
    """:func:`http_call` with the answer's headers."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), response.getheaders()
    finally:
        conn.close()


@dataclass
class RedisServer:
    """redis-server (else a Valkey binary) on a free loopback port, nothing on disk."""

    procs: ProcessSet
    name: str = "redis"
    port: int = field(default_factory=free_port)
    binary: str = ""
    managed: Managed | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.binary = self.binary or shutil.which("redis-server") or find_server_binary()
        data = self.procs.workdir / f"{self.name}-data"
        data.mkdir(exist_ok=True)
        argv = [
            self.binary, "--port", str(self.port), "--bind", HOST, "--save", "",
            "--appendonly", "no", "--dir", str(data), "--protected-mode", "yes",
        ]  # fmt: skip
        self.managed = self.procs.start(self.name, argv)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.managed.running():
                raise BenchError(f"{self.binary} exited at start:\n{self.managed.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((HOST, self.port), timeout=0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.02)
        raise BenchError(f"{self.binary} did not answer on port {self.port}")

    def stop(self) -> None:
        if self.managed is not None:
            self.procs.stop(self.managed)
            self.managed = None


def _granian() -> list[str]:
    beside = Path(sys.executable).parent / "granian"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("granian")
    if found is None:
        raise BenchError("granian is not installed (pip install granian)")
    return [found]


@dataclass
class ApiServer:
    """The API: ``throttler serve`` (uvicorn), granian, or the profiled server."""

    procs: ProcessSet
    redis_url: str
    server: str = "uvicorn"  # uvicorn | uvicorn-nodelay | granian | profiled
    processes: int = 1
    name: str = "api"
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    managed: Managed | None = None

    def argv(self) -> list[str]:
        if self.server == "uvicorn":
            return [
                sys.executable, "-m", "throttler", "serve",
                "--workers", str(self.processes), "--bind", f"{HOST}:{self.port}",
            ]  # fmt: skip
        if self.server == "uvicorn-nodelay":
            return [
                sys.executable, "-m", "bench.uvfixed",
                "--port", str(self.port), "--workers", str(self.processes),
            ]  # fmt: skip
        if self.server == "granian":
            return [
                *_granian(), "--interface", "asgi", "--factory",
                "--host", HOST, "--port", str(self.port),
                "--workers", str(self.processes), "--log-level", "warning",
                "throttler.cli:app_factory",
            ]  # fmt: skip
        if self.server == "profiled":
            out = self.procs.workdir / f"{self.name}-profiles"
            out.mkdir(exist_ok=True)
            return [
                sys.executable, "-m", "bench.profserve",
                "--port", str(self.port), "--out", str(out),
            ]  # fmt: skip
        raise BenchError(f"unknown server {self.server!r}")

    def start(self, timeout: float = 30.0) -> ApiServer:
        env = {**service_env(self.redis_url), "BIND_ADDRESS": f"{HOST}:{self.port}"}
        env.update(self.extra_env)
        self.managed = self.procs.start(self.name, self.argv(), env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.managed.running():
                raise BenchError(f"{self.name} exited at start:\n{self.managed.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if http_call(self.port, "GET", "/health", timeout=0.5)[0] == 200:
                    self._wait_workers(deadline)
                    return self
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not become healthy:\n{self.managed.log_tail()}")

    def _wait_workers(self, deadline: float) -> None:
        """With several processes, wait until each answers /ready (Redis connected)."""
        assert self.managed is not None
        if self.processes < 2:
            return
        while time.monotonic() < deadline:
            if len(descendants(self.managed.pid)) >= self.processes:
                break
            time.sleep(0.05)
        # a freshly forked worker is still importing; give every one a few requests
        for _ in range(20 * self.processes):
            with contextlib.suppress(OSError, http.client.HTTPException):
                http_call(self.port, "GET", "/ready", timeout=2.0)

    def stop(self) -> None:
        if self.managed is not None:
            self.procs.stop(self.managed)
            self.managed = None
