"""docs/streams.md is true: its snippets run against a real Redis and a worker applies
what they publish; its field tables list the Structs' fields; the JSON Schema in docs/ is
what `throttler schema` prints."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec
import pytest

from core.config_store import ConfigStore
from core.keys import KeySpace
from core.settings import Settings, load_settings
from core.streams import EVENT_FIELD
from schemas.events import AuditEvent, DeadLetter, LimitChanged, SetLimit
from schemas.limits import Limit
from tests.support.poll import until
from tests.support.worker import running_worker

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.gateway import Gateway

pytestmark = pytest.mark.anyio

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "streams.md"
EXAMPLE = ROOT / "docs" / "examples" / "publish.py"
SCHEMA = ROOT / "docs" / "config-event.schema.json"
_audit = msgspec.json.Decoder(AuditEvent)


async def audit_of(redis: Redis, keys: KeySpace, config_id: str) -> AuditEvent | None:
    rows: Any = await redis.xrange(keys.audit_stream, min=config_id.partition("-")[0])
    for _, fields in rows:
        record = _audit.decode(fields[EVENT_FIELD.encode()])
        if record.config_id == config_id:
            return record
    return None


def _settings(redis_url: str, prefix: str) -> Settings:
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix, "WORKER_BLOCK_MS": "200"}
    return load_settings(env, env_file=None)


def test_the_doc_shows_the_example_file_verbatim() -> None:
    example = EXAMPLE.read_text(encoding="utf-8")
    assert f"```python\n{example}```\n" in DOC.read_text(encoding="utf-8")


async def test_the_redis_py_example_is_applied(
    redis_url: str, prefix: str, redis: Redis, gateway: Gateway
) -> None:
    settings = _settings(redis_url, prefix)
    keys = KeySpace(prefix)
    async with running_worker(settings, "docs"):
        with anyio.fail_after(30):
            done = await anyio.run_process(
                [sys.executable, str(EXAMPLE)],
                env={**os.environ, "REDIS_URL": redis_url, "KEY_PREFIX": prefix},
            )
        entry_id = done.stdout.decode().strip()
        assert re.fullmatch(r"\d+-\d+", entry_id), entry_id
        audit = await until(lambda: audit_of(redis, keys, entry_id))
    assert (audit.result, audit.key, audit.actor) == ("created", "partner:acme", "billing-service")
    assert audit.submitted_at_ms > 0
    limit = Limit(requests=500, window_ms=60_000, algorithm="gcra", burst=50)
    assert await ConfigStore(gateway, keys, 1000).get("partner:acme") == limit


def _redis_cli_lines() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.startswith("redis-cli XADD ")]


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
async def test_the_redis_cli_lines_are_applied(
    redis_url: str, prefix: str, redis: Redis, gateway: Gateway
) -> None:
    lines = _redis_cli_lines()
    assert len(lines) == 2
    settings = _settings(redis_url, prefix)
    keys = KeySpace(prefix)
    store = ConfigStore(gateway, keys, 1000)
    results = []
    async with running_worker(settings, "docs"):
        for line in lines:
            argv = shlex.split(line)
            assert argv[2] == "{throttler}:config"
            argv = ["redis-cli", "-u", redis_url, argv[1], keys.config_stream, *argv[3:]]
            with anyio.fail_after(10):
                done = await anyio.run_process(argv)
            entry_id = done.stdout.decode().strip()
            assert re.fullmatch(r"\d+-\d+", entry_id), done.stdout
            audit = await until(partial(audit_of, redis, keys, entry_id))
            results.append((audit.result, audit.key, audit.actor))
            if len(results) == 1:
                assert await store.get("free:client-9") == Limit(requests=10, window_ms=60_000)
    assert results == [
        ("created", "free:client-9", "ops:redis-cli"),
        ("deleted", "free:client-9", "ops:redis-cli"),
    ]
    assert await store.get("free:client-9") is None


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
        ("LimitChanged", LimitChanged, set()),
        ("DeadLetter", DeadLetter, set()),
    ],
)
def test_the_field_tables_list_every_field(
    marker: str, struct: type[msgspec.Struct], extra: set[str]
) -> None:
    assert _table_after(marker) == {f.name for f in msgspec.structs.fields(struct)} | extra
