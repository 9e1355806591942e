"""docs/streams.md is true: its commands (redis-cli, the redis-py example, `throttler apply`)
run against `throttler serve` on its embedded Redis, as `make run` starts it, with the
REDIS_URL it prints, and the service applies what they publish; its field tables list the
Structs' fields; the JSON Schema in docs/ is what `throttler schema` prints."""

from __future__ import annotations

import os
import re
import shutil
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import msgspec
import pytest

from schemas.events import AuditEvent, DeadLetter, LimitChanged, PolicyChanged, SetLimit
from tests.support.poll import until
from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator


pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "streams.md"
EXAMPLE = ROOT / "docs" / "examples" / "publish.py"
SCHEMA = ROOT / "docs" / "config-event.schema.json"


def test_the_doc_shows_the_example_file_verbatim() -> None:
    example = EXAMPLE.read_text(encoding="utf-8")
    assert f"```python\n{example}```\n" in DOC.read_text(encoding="utf-8")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    """`throttler serve` as `make run` starts it: on its own embedded Redis."""
    proc = ServiceProcess({"WORKER_BLOCK_MS": "100", "WORKER_METRICS_PORT": "0"}, embedded=True)
    try:
        yield proc.start(tmp_path)
    finally:
        proc.stop()


def _limit_of(service: ServiceProcess, key: str) -> Callable[[], Awaitable[Any]]:
    """A probe: the key's limit as `GET /rate-limit/{key}` shows it, or None."""

    async def probe() -> Any:
        async with httpx.AsyncClient(base_url=service.base_url) as api:
            answer = await api.get(f"/rate-limit/{key}")
        if answer.status_code != 200 or answer.json()["source"] != "key":
            return None
        return {k: answer.json()[k] for k in ("requests", "window_ms", "algorithm", "burst")}

    return probe


async def _gone(service: ServiceProcess, key: str) -> bool:
    async with httpx.AsyncClient(base_url=service.base_url) as api:
        return bool((await api.get(f"/rate-limit/{key}")).json()["source"] == "default")


async def test_the_redis_py_example_reaches_the_service(service: ServiceProcess) -> None:
    redis_url = service.printed()[2]  # what `make run` prints: the docs say to use it
    with anyio.fail_after(30):
        done = await anyio.run_process(
            [sys.executable, str(EXAMPLE)], env={**os.environ, "REDIS_URL": redis_url}
        )
    assert re.fullmatch(r"\d+-\d+", done.stdout.decode().strip()), done.stdout
    limit = await until(_limit_of(service, "partner:acme"))
    assert limit == {"requests": 500, "window_ms": 60000, "algorithm": "gcra", "burst": 50}


async def test_the_example_says_it_needs_redis_url() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    with anyio.fail_after(30):
        done = await anyio.run_process([sys.executable, str(EXAMPLE)], env=env, check=False)
    assert done.returncode == 1
    assert b"set REDIS_URL" in done.stderr


def _bash_lines() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
async def test_the_redis_cli_lines_reach_the_service(service: ServiceProcess) -> None:
    lines = _bash_lines()
    assert len(lines) == 2
    assert all(line.startswith('redis-cli -u "$REDIS_URL" XADD ') for line in lines)
    env = {**os.environ, "REDIS_URL": service.printed()[2]}
    with anyio.fail_after(10):
        await anyio.run_process(["bash", "-c", lines[0]], env=env)
    assert await until(_limit_of(service, "free:client-9")) == {
        "requests": 10,
        "window_ms": 60000,
        "algorithm": "token_bucket",
        "burst": 10,
    }
    with anyio.fail_after(10):
        await anyio.run_process(["bash", "-c", lines[1]], env=env)
    await until(partial(_gone, service, "free:client-9"))


async def test_the_apply_file_example_reaches_the_service(service: ServiceProcess) -> None:
    text = DOC.read_text(encoding="utf-8")
    yaml_file = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert yaml_file
    env = {**os.environ, "REDIS_URL": service.printed()[2]}
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "throttler", "apply", "-", "--wait", "--timeout", "30"],
            input=yaml_file[1].encode(),
            env=env,
        )
    assert b"applied 3, skipped 0, failed 0, pending 0" in done.stdout
    assert (await _limit_of(service, "pro:client-456")()) == {
        "requests": 10000,
        "window_ms": 3600000,
        "algorithm": "gcra",
        "burst": 500,
    }


async def test_the_schema_in_docs_is_what_throttler_schema_prints() -> None:
    with anyio.fail_after(30):
        done = await anyio.run_process([sys.executable, "-m", "throttler", "schema"])
    assert done.stdout.decode() == SCHEMA.read_text(encoding="utf-8"), (
        "docs/config-event.schema.json is out of date: "
        "run `throttler schema > docs/config-event.schema.json`"
    )


def _table_after(marker: str) -> set[str]:
    """The backticked names in the first column of the table after ``<!-- fields: X -->``."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"<!-- fields: {marker} -->")
    rows = []
    for line in text[start:].splitlines()[3:]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1])
    return {name for cell in rows for name in re.findall(r"`([a-z_]+)`", cell)}


@pytest.mark.parametrize(
    ("marker", "struct", "extra"),
    [
        ("SetLimit", SetLimit, {"type"}),
        ("AuditEvent", AuditEvent, set()),
        ("LimitChanged", LimitChanged, {"type"}),  # a tag, not a field
        ("PolicyChanged", PolicyChanged, {"type"}),
        ("DeadLetter", DeadLetter, set()),
    ],
)
def test_the_field_tables_list_every_field(
    marker: str, struct: type[msgspec.Struct], extra: set[str]
) -> None:
    assert _table_after(marker) == {f.name for f in msgspec.structs.fields(struct)} | extra
