"""Run ``throttler`` as a real process and stop it by its pid."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from core.embedded import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["ServiceProcess", "running"]


_SERVING = re.compile(r"^throttler: serving (\S+) \(docs (\S+)\); redis (\S+)", re.MULTILINE)


@dataclass
class ServiceProcess:
    """``throttler <args>`` with the given environment; output goes to a log file.

    ``SHUTDOWN_DRAIN_MS`` defaults to 0 here, so that stopping takes no drain period; the
    shutdown tests set it. ``session``: run in a session (and process group) of its own,
    as a service started from a terminal is, so that :meth:`signal_group` can signal it.
    ``embedded``: no ``REDIS_URL`` at all (not even the developer's), as with a bare
    ``make run``: `serve` starts its embedded server and prints its URL.
    """

    env: dict[str, str]
    args: list[str] = field(default_factory=lambda: ["serve"])
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    session: bool = False
    embedded: bool = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, tmp_path: Path, *, wait: bool = True) -> ServiceProcess:
        env = {**os.environ, **self.env, "BIND_ADDRESS": f"127.0.0.1:{self.port}"}
        env.setdefault("LOG_LEVEL", "info")
        # Most e2e tests give their keys limits inline; off is the default (tested apart).
        env.setdefault("INLINE_LIMITS", "true")
        env.setdefault("SHUTDOWN_DRAIN_MS", "0")
        # Envoy's RLS defaults to a fixed port; the tests of it give a free one.
        env.setdefault("RLS_BIND_ADDRESS", "off")
        if self.embedded:
            env.pop("REDIS_URL", None)
            env.pop("KEY_PREFIX", None)
        self.log_path = tmp_path / f"throttler-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "throttler", *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.session,
            )
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"throttler exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"throttler did not become healthy:\n{self.log()}")

    def printed(self) -> tuple[str, str, str]:
        """What `serve` printed on its first line: its URL, its docs URL, its Redis URL."""
        match = _SERVING.search(self.log())
        assert match, f"no 'throttler: serving' line:\n{self.log()}"
        return match[1], match[2], match[3]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def signal_group(self, sig: int) -> None:
        """``sig`` to the process group, as Ctrl-C in a terminal sends SIGINT."""
        assert self.proc is not None
        assert self.session
        os.killpg(self.proc.pid, sig)

    def problems(self) -> list[str]:
        """Log lines at level warning or above, and tracebacks: none on a clean run."""
        bad = ('"level":"warning"', '"level":"error"', '"level":"critical"', "Traceback")
        return [line for line in self.log().splitlines() if any(b in line for b in bad)]

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait, and SIGKILL only if it does not exit in time."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code


@contextlib.contextmanager
def running(procs: list[ServiceProcess], tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    """Start every process (in parallel), wait until each is healthy, stop them all after."""
    try:
        for proc in procs:
            proc.start(tmp_path, wait=False)
        for proc in procs:
            proc.wait_healthy()
        yield procs
    finally:
        for proc in procs:
            proc.stop()
