"""``pip install ./clients/python`` in a fresh virtualenv, with no other package of the
project, gives a client that works against a running service."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from core.version import VERSION

if TYPE_CHECKING:
    from tests.support.service import ServiceProcess

CLIENT = Path(__file__).resolve().parents[3] / "clients" / "python"

#: Run by the fresh virtualenv's Python, from a directory outside the repository.
USE_THE_CLIENT = textwrap.dedent(
    """
    import importlib.util, sys
    import anyio
    from throttler_client import AsyncThrottlerClient, Limit, ThrottlerClient, __version__

    base_url, key = sys.argv[1], sys.argv[2]
    for package in ("api", "core", "workers", "schemas", "throttler"):
        assert importlib.util.find_spec(package) is None, package

    with ThrottlerClient(base_url) as client:
        assert client.set_limit(key, Limit(requests=2, window_ms=86_400_000)).status == "created"
        first = client.check(key)

    async def main() -> None:
        async with AsyncThrottlerClient(base_url) as client:
            second = await client.check(key)
            third = await client.check(key)
            print(
                __version__, first.remaining, second.remaining, third.allowed,
                third.headers["retry-after"] != "", sep=" ",
            )

    anyio.run(main)
    """
)


@pytest.mark.timeout(600)
def test_the_client_installs_alone_and_works(
    service: ServiceProcess, prefix: str, tmp_path: Path
) -> None:
    # pip builds in the source tree: build a copy, so that the checkout stays as it was
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(CLIENT, tmp_path / "clients" / "python", ignore=ignore)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=120)
    python = str(tmp_path / "venv" / "bin" / "python")

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``python args...`` in the fresh virtualenv, from outside the repository."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return subprocess.run(
            [python, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp_path,
            env=env,
            check=False,
        )

    quiet = ("--quiet", "--disable-pip-version-check")
    installed = run("-m", "pip", "install", *quiet, "./clients/python", timeout=480)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    listing = run("-m", "pip", "list", "--format", "json", "--disable-pip-version-check")
    names = {item["name"].lower() for item in json.loads(listing.stdout)}
    assert {"throttler-client", "httpx", "anyio"} <= names
    assert not names & {"throttler", "litestar", "redis", "msgspec", "starlette"}, names

    script = tmp_path / "use_the_client.py"
    script.write_text(USE_THE_CLIENT)
    used = run(str(script), service.base_url, f"{prefix}:installed")
    assert used.returncode == 0, used.stderr
    assert used.stdout.split() == [VERSION, "1", "0", "False", "True"]
