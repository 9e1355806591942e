"""schemathesis against the served OpenAPI document, in-process (no server, no network).

The app is the one `throttler serve` runs (``build_app``: in-process worker included, on the
session's Redis). schemathesis starts its lifespan on first use, in the event-loop thread it
sends every request through, so the app's Redis clients live in that one loop; the fixture
shuts the lifespan down at the end.

Each operation gets a fixed budget of examples, derandomized (the same inputs every run),
valid ones and invalid ones. Every response must be no 5xx, carry a documented status code
and content type, and match the documented schema for that status.
"""

from __future__ import annotations

import uuid
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.settings import load_settings
from throttler.cli import build_app

if TYPE_CHECKING:
    from collections.abc import Iterator

    from schemathesis import APIOperation, BaseSchema, Case

EXAMPLES = 25  # per operation and generation mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

#: Every operation of the document, with the known defects that fail it today.
OPERATIONS: dict[str, str | None] = {
    "GET /health": None,
    "GET /ready": None,
    "HEAD /health": None,
    "HEAD /ready": None,
    "GET /metrics": None,
    "GET /rate-limit/{key}": None,
    "POST /rate-limit/{key}": None,
    "DELETE /rate-limit/{key}": None,
    "POST /rate-limit/{key}/check": None,
    "POST /check": None,
    "GET /notifications": None,
    "GET /dead-letters": None,
    "POST /dead-letters/{dead_id}/replay": None,
}


@pytest.fixture(scope="module")
def schema(redis_url: str) -> Iterator[BaseSchema]:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        "APPLY_WAIT_MS": "2000",
        "WORKER_BLOCK_MS": "100",
    }
    app = build_app(load_settings(env, env_file=None))
    try:
        loaded = schemathesis.openapi.from_asgi("/schema/openapi.json", app)
        # GET /notifications never ends: keep its first event (`subscribed`) and stop.
        loaded.config.max_stream_events = 1
        yield loaded
    finally:
        asgi.shutdown_lifespans()


def operations(schema: BaseSchema) -> dict[str, APIOperation[Any, Any, Any, Any]]:
    found = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the document itself is valid
        operation = result.ok()
        found[operation.label] = operation
    return found


def test_the_operation_list_is_the_document(schema: BaseSchema) -> None:
    assert set(operations(schema)) == set(OPERATIONS)


def run(operation: APIOperation[Any, Any, Any, Any], mode: schemathesis.GenerationMode) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def test(case: Case[Any]) -> None:
        response = case.call()
        case.validate_response(response, checks=CHECKS)

    test()


@pytest.mark.parametrize(
    "label",
    [
        pytest.param(label, marks=[pytest.mark.xfail(strict=True, reason=bug)] if bug else [])
        for label, bug in OPERATIONS.items()
    ],
)
def test_operation_conforms_to_the_document(schema: BaseSchema, label: str) -> None:
    operation = operations(schema)[label]
    run(operation, schemathesis.GenerationMode.POSITIVE)
    # (Unsatisfiable: nothing about this operation's input can be invalid - no parameters)
    with suppress(Unsatisfiable):
        run(operation, schemathesis.GenerationMode.NEGATIVE)
