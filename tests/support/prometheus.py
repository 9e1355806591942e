"""A real Prometheus server (Debian's ``prometheus`` package) on a free loopback port."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from core.embedded import free_port

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["PROMETHEUS", "PrometheusProcess"]

PROMETHEUS = shutil.which("prometheus")


@dataclass
class PrometheusProcess:
    """``prometheus`` with the given configuration (and rule files) in a directory of its own."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(
        self, config: dict[str, Any], files: dict[str, str], timeout: float = 30.0
    ) -> PrometheusProcess:
        assert PROMETHEUS is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (self.workdir / name).write_text(text)
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log()}"
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"prometheus did not become ready:\n{self.log()}")

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s ``data`` (asserting the call succeeded)."""
        async with httpx.AsyncClient(timeout=5) as client:
            resp = await client.get(f"{self.url}/api/v1/{path}", params=params)
        body = resp.json()
        assert resp.status_code == 200, body
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
