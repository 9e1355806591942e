"""What the one-shot commands say when something is missing or wrong: an unreachable Redis,
no REDIS_URL, a file with several bad items, no live worker, no dead letters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import msgspec
import pytest

from core.embedded import free_port
from core.keys import KeySpace
from core.streams import EVENT_FIELD
from schemas.events import DeadLetter
from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from pathlib import Path

    from litestar.testing import AsyncTestClient
    from redis.asyncio import Redis

GOOD = "- key: free:a\n  requests: 10\n  window_ms: 60000\n- key: free:b\n  delete: true\n"
BAD = (
    "- key: free:a\n  requests: 10\n  window_ms: 60000\n"
    "- key: 'free a'\n  delete: true\n"
    "- key: free:c\n  requests: 10\n  window_ms: 0\n"
)


def throttler(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "throttler", *args],
        env={**base, "WORKER_METRICS_PORT": "0", **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["apply", "FILE"],
        ["apply", "FILE", "--wait", "--timeout", "1"],
        ["dead-letters", "list"],
        ["dead-letters", "replay", "--all"],
        ["dead-letters", "replay", "1-1"],
        ["worker", "--check"],
    ],
    ids=" ".join,
)
def test_an_unreachable_redis_is_one_line_and_exit_code_1(args: list[str], tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text(GOOD)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"  # nothing listens there
    done = throttler(*[str(path) if a == "FILE" else a for a in args], env={"REDIS_URL": url})
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, output
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    assert f"127.0.0.1:{port}" in output


def test_a_command_that_needs_redis_says_where_to_find_it(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text(GOOD)
    done = throttler("apply", str(path))
    assert done.returncode == 2
    assert "REDIS_URL must be set" in done.stderr
    assert "throttler serve" in done.stderr  # where the URL comes from


def test_apply_check_validates_offline(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text(GOOD)
    done = throttler("apply", "--check", str(path))  # no REDIS_URL anywhere
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{path}: 2 changes, all valid (nothing was sent)"


def test_apply_reports_every_bad_item_in_the_apis_words(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text(BAD)
    done = throttler("apply", "--check", str(path))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"throttler apply: {path}:4: item 2: key must be 1-256 characters (at most 256 "
        "bytes of UTF-8) without whitespace, control characters, / { } or * "
        "(got 6 bytes, first invalid character ' ')",
        f"throttler apply: {path}:6: item 3: window_ms: Expected `int` >= 1",
        "throttler apply: 2 problems; the file is not valid",
    ]


def test_apply_reads_standard_input() -> None:
    done = throttler("apply", "--check", "-", stdin=GOOD)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "-: 2 changes, all valid (nothing was sent)"
    bad = throttler("apply", "--check", "-", stdin=BAD)
    assert bad.returncode == 2
    assert "<stdin>:4: item 2: key must be" in bad.stderr


def test_apply_wait_without_a_worker_says_so(redis_url: str, prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text(GOOD)
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix}
    done = throttler("apply", str(path), "--wait", "--timeout", "0.5", env=env)
    assert done.returncode == 1
    assert "no worker heartbeat is alive" in done.stderr  # said up front...
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("applied 0, skipped 0, failed 0, pending 2 (no worker heartbeat")
    assert "\r" not in done.stdout + done.stderr  # no progress bar redrawn into a pipe


@pytest.mark.anyio
async def test_dead_letters_list_prints_what_get_dead_letters_answers(
    redis_url: str,
    prefix: str,
    redis: Redis,
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    env = {"REDIS_URL": redis_url, "KEY_PREFIX": prefix}
    empty = throttler("dead-letters", "list", env=env)
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout) == [] == (await client.get("/dead-letters")).json()

    letter = DeadLetter(
        config_id="1-1",
        reason="invalid event: no 'event' field",
        fields={"x": "y"},
        deliveries=1,
        dead_at_ms=2,
        worker="w",
    )
    await redis.xadd(KeySpace(prefix).dead_stream, {EVENT_FIELD: msgspec.json.encode(letter)})
    listed = throttler("dead-letters", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    answered = (await client.get("/dead-letters")).json()
    assert json.loads(listed.stdout) == answered
    assert [set(entry) for entry in answered] == [{"id", "letter"}]


def test_the_cli_warns_once_about_ignored_variables(redis_url: str) -> None:
    env = {"REDIS_URL": redis_url, "RUST_LOG": "debug", "THROTTLER_X": "1"}
    done = throttler("dead-letters", "list", env=env)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "RUST_LOG" in line]
    assert len(warnings) == 1, done.stderr
    assert "THROTTLER_X" in warnings[0]
    assert "use LOG_LEVEL" in warnings[0]


def test_serve_says_where_it_is_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    service = ServiceProcess({"REDIS_URL": f"redis://:s3cret@127.0.0.1:{port}/0"})
    try:
        service.start(tmp_path)
        base, docs, redis_url = service.printed()
    finally:
        service.stop()
    assert (base, docs) == (service.base_url, f"{service.base_url}/schema")
    assert redis_url == f"redis://:***@127.0.0.1:{port}/0"  # given, and never in clear
    assert "s3cret" not in service.log()
