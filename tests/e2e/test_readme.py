"""The README walkthrough and the docs/api.md examples, verbatim, against a real service.

Every ``curl`` command of the README block after ``<!-- walkthrough`` (and of every ``bash``
block of docs/api.md) runs with bash against a fresh ``throttler serve`` as ``make run``
starts it: no ``REDIS_URL``, so on its own embedded server (not a Redis on 6379). Only
``http://localhost:8080`` is replaced by the service's address. Its output is compared
with the ``#=>`` lines below it: JSON field by field, the status line and each listed header
exactly. Time fields may be smaller than shown by at most the time elapsed since the first
command (time passes), never larger.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
API_DOCS = ROOT / "docs" / "api.md"
DOC_URL = "http://localhost:8080"
#: JSON fields that shrink as time passes (ms), and fields that differ on every run.
TIME_FIELDS_MS = frozenset({"reset_after_ms", "retry_after_ms", "wait_ms"})
VARYING_FIELDS = frozenset({"timestamp", "version", "lease"})


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)


def steps_in(block: str) -> list[Step]:
    """The commands of one ``bash`` block and the ``#=>`` lines after each."""
    steps: list[Step] = []
    pending: list[str] = []
    for line in block.splitlines():
        if pending:  # continuation of a multi-line command
            pending.append(line)
            if not line.rstrip().endswith("\\"):
                steps.append(Step("\n".join(pending)))
                pending = []
        elif line.startswith("#=>"):
            assert steps, f"output line before any command: {line!r}"
            steps[-1].expected.append(line[3:].strip())
        elif line.startswith("curl "):
            if line.rstrip().endswith("\\"):
                pending = [line]
            else:
                steps.append(Step(line))
        else:
            assert not line.strip() or line.startswith("#"), f"unexpected line {line!r}"
    assert not pending, "a block ends inside a command"
    return steps


def _block_at(text: str, fence: int) -> tuple[str, int]:
    """The body of the code block whose opening fence starts at ``fence``, and its end."""
    body_start = text.index("\n", fence) + 1
    end = text.index("\n```", body_start)
    return text[body_start:end], end + 4


def walkthrough_steps(text: str) -> list[Step]:
    """The README walkthrough: the ``bash`` block after the ``<!-- walkthrough`` comment."""
    block, _ = _block_at(text, text.index("```bash", text.index("<!-- walkthrough")))
    return steps_in(block)


def bash_block_steps(text: str) -> list[Step]:
    """Every ``bash`` block of a document, in order."""
    steps: list[Step] = []
    pos = text.find("```bash")
    while pos != -1:
        block, end = _block_at(text, pos)
        steps += steps_in(block)
        pos = text.find("```bash", end)
    return steps


@pytest.mark.parametrize(
    ("steps", "at_least"),
    [
        (walkthrough_steps(README.read_text()), 8),
        (bash_block_steps(API_DOCS.read_text()), 25),
    ],
    ids=["README", "docs/api.md"],
)
def test_the_examples_are_found(steps: list[Step], at_least: int) -> None:
    assert len(steps) >= at_least
    assert all(step.expected for step in steps), [s.command for s in steps if not s.expected]
    assert all(DOC_URL in step.command for step in steps)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    # WORKER_BLOCK_MS only makes the in-process worker stop sooner; it changes no answer.
    proc = ServiceProcess({"WORKER_BLOCK_MS": "100"}, embedded=True)
    try:
        proc.start(tmp_path)
        yield proc
    finally:
        proc.stop()


def changes_in(redis_url: str) -> int:
    """How many config changes the Redis at ``redis_url`` holds (the walkthrough made them)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.xlen("{throttler}:config"))
    finally:
        client.close()


def compare_json(actual: Any, expected: Any, elapsed_ms: float, where: str) -> None:
    assert isinstance(actual, dict), f"{where}: not a JSON object: {actual!r}"
    assert isinstance(expected, dict)
    assert set(actual) == set(expected), f"{where}: fields {set(actual)} != {set(expected)}"
    replacements: dict[str, str] = {}
    for name in TIME_FIELDS_MS & set(expected):
        got, shown = actual[name], expected[name]
        assert isinstance(got, int), f"{where}: {name} = {got!r}"
        assert shown - elapsed_ms - 1 <= got <= shown, f"{where}: {name} {got} vs {shown}"
        replacements[str(shown)] = str(got)
    for name in VARYING_FIELDS & set(expected):
        assert isinstance(actual[name], str), f"{where}: {name} = {actual[name]!r}"
        assert actual[name], f"{where}: {name} is empty"
    if "timestamp" in expected:
        dt.datetime.fromisoformat(actual["timestamp"].replace("Z", "+00:00"))
    for name, shown in expected.items():
        if name in TIME_FIELDS_MS | VARYING_FIELDS:
            continue
        want = shown
        if isinstance(want, str):  # e.g. the message quotes retry_after_ms
            for old, new in replacements.items():
                want = want.replace(old, new)
        if isinstance(want, list) and want and all(isinstance(w, dict) for w in want):
            # e.g. every limit's usage in GET /rate-limit/{key}: its times change as well
            assert isinstance(actual[name], list), f"{where}: {name} = {actual[name]!r}"
            assert len(actual[name]) == len(want), f"{where}: {name} = {actual[name]!r}"
            for i, (got_item, want_item) in enumerate(zip(actual[name], want, strict=True)):
                compare_json(got_item, want_item, elapsed_ms, f"{where}: {name}[{i}]")
            continue
        assert actual[name] == want, f"{where}: {name} = {actual[name]!r}, documented {want!r}"


def _seconds_within(got: int, shown: int, elapsed_ms: float) -> bool:
    """A time in whole seconds shown as ``shown``: no larger, smaller only by elapsed time."""
    return shown - math.ceil(elapsed_ms / 1000) <= got <= shown


def compare_header(
    name: str, got: str, shown: str, body: dict[str, Any], elapsed_ms: float, where: str
) -> None:
    if name == "retry-after":
        assert int(got) >= 1, f"{where}: {name} {got}"
        assert _seconds_within(int(got), int(shown), elapsed_ms), f"{where}: {name} {got}"
    elif name == "x-ratelimit-reset":  # a Unix time: the one shown is from another day
        expected_at = time.time() + body["reset_after_ms"] / 1000
        assert abs(int(got) - expected_at) <= 2, f"{where}: {name} {got} vs {expected_at}"
    elif name == "ratelimit":  # "<policy>";r=<remaining>;t=<seconds>
        got_head, _, got_t = got.rpartition(";t=")
        shown_head, _, shown_t = shown.rpartition(";t=")
        assert got_head == shown_head, f"{where}: {name} {got!r} vs {shown!r}"
        assert _seconds_within(int(got_t), int(shown_t), elapsed_ms), f"{where}: {name} {got}"
    else:
        assert got == shown, f"{where}: {name} = {got!r}, documented {shown!r}"


def compare_http(output: str, expected: list[str], elapsed_ms: float, where: str) -> None:
    head, _, body_text = output.replace("\r\n", "\n").partition("\n\n")
    status, *header_lines = head.split("\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert status.strip() == expected[0], f"{where}: status {status!r}"
    body = json.loads(body_text)
    for line in expected[1:-1]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        assert name in headers, f"{where}: no {name} header in {headers}"
        compare_header(name, headers[name], value.strip(), body, elapsed_ms, where)
    compare_json(body, json.loads(expected[-1]), elapsed_ms, where)


def run_examples(service: ServiceProcess, steps: list[Step]) -> None:
    """Run each command with bash and compare its output with what the document shows."""
    assert shutil.which("curl"), "the documented examples need curl on PATH"
    began = time.monotonic()
    for step in steps:
        command = step.command.replace(DOC_URL, service.base_url)
        done = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=False
        )
        elapsed_ms = (time.monotonic() - began) * 1000
        where = step.command.splitlines()[0]
        assert done.returncode == 0, f"{where}: {done.stderr}\n{service.log()}"
        if step.expected[0].startswith("HTTP/"):
            compare_http(done.stdout, step.expected, elapsed_ms, where)
        else:
            assert len(step.expected) == 1, where
            compare_json(json.loads(done.stdout), json.loads(step.expected[0]), elapsed_ms, where)


def test_the_readme_walkthrough_gives_the_documented_answers(service: ServiceProcess) -> None:
    base, docs, redis_url = service.printed()
    assert (base, docs) == (service.base_url, f"{service.base_url}/schema")
    assert ":6379/" not in redis_url
    run_examples(service, walkthrough_steps(README.read_text()))
    assert changes_in(redis_url) == 2  # the walkthrough's create and delete, on that server


def test_the_api_docs_examples_give_the_documented_answers(service: ServiceProcess) -> None:
    run_examples(service, bash_block_steps(API_DOCS.read_text()))
    assert changes_in(service.printed()[2]) > 10
