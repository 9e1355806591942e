"""``api.drain``: the drain state and the ASGI wrapper that answers ``/ready`` while draining
(the whole shutdown runs against real processes in tests/e2e/test_drain.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from api.drain import Drain, DrainGate

if TYPE_CHECKING:
    from litestar.types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio


async def inner(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that answers 200 "inner" to everything."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"inner", "more_body": False})


async def call(app: DrainGate, path: str, kind: str = "http") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(dict(message))

    scope: Any = {"type": kind, "path": path, "method": "GET", "headers": []}
    await app(scope, receive, send)
    return sent


async def test_ready_answers_503_only_while_draining() -> None:
    drain = Drain()
    gate = DrainGate(inner, drain)
    assert (await call(gate, "/ready"))[1]["body"] == b"inner"
    drain.begin()
    start, body = await call(gate, "/ready")
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body["body"])
    assert json.loads(body["body"])["error"] == "shutting_down"
    # Every other route, and other scope types, still reach the app.
    assert (await call(gate, "/rate-limit/k/check"))[1]["body"] == b"inner"
    assert (await call(gate, "/ready/x"))[1]["body"] == b"inner"
    assert (await call(gate, "/ready", kind="websocket"))[1]["body"] == b"inner"


def test_drain_runs_its_callbacks_once_and_late_ones_at_once() -> None:
    drain = Drain()
    calls: list[str] = []
    drain.on_begin(lambda: calls.append("early"))
    assert calls == []
    drain.begin()
    drain.begin()
    assert drain.draining
    assert calls == ["early"]
    drain.on_begin(lambda: calls.append("late"))
    assert calls == ["early", "late"]
