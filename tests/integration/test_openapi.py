"""The OpenAPI document is valid and says what a code generator needs: security schemes,
one body per status, response headers, the key's rules, closed request bodies."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from core.settings import load_settings
from schemas.limits import KEY_PATTERN
from throttler.cli import build_app


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0"}, env_file=None)
    schema: dict[str, Any] = build_app(settings, worker=False).openapi_schema.to_schema()
    return schema


def operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def test_openapi_spec_validator_accepts_it(document: dict[str, Any]) -> None:
    validate(document)


def test_guarded_operations_name_their_security_scheme(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["adminToken"] == {**schemes["adminToken"], "type": "http", "scheme": "bearer"}
    assert schemes["checkToken"]["scheme"] == "bearer"
    assert (schemes["notificationTicket"]["in"], schemes["notificationTicket"]["name"]) == (
        "query",
        "ticket",
    )
    security = {label: op.get("security") for label, op in operations(document).items()}
    assert security["POST /rate-limit/{key}"] == [{"adminToken": []}]
    assert security["POST /rate-limit/{key}/check"] == [{"checkToken": []}]
    assert security["POST /check"] == [{"checkToken": []}]
    assert security["GET /notifications"] == [{"adminToken": []}, {"notificationTicket": []}]
    assert security["GET /health"] is None
    for label, op in operations(document).items():
        assert ("401" in op["responses"]) == (security[label] is not None), label


def test_every_answer_has_one_body_shape_and_errors_are_ours(document: dict[str, Any]) -> None:
    for label, op in operations(document).items():
        for status, response in op["responses"].items():
            for media in response.get("content", {}).values():
                assert "oneOf" not in media.get("schema", {}), f"{label} {status}"
                if status.startswith("4") and status != "429":
                    ref = media["schema"].get("$ref")
                    assert ref == "#/components/schemas/ErrorResponse", f"{label} {status}"


def test_response_headers_are_documented(document: dict[str, Any]) -> None:
    check = operations(document)["POST /rate-limit/{key}/check"]["responses"]
    denied = check["429"]["headers"]
    for name in ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "RateLimit"):
        assert denied[name]["required"] is True, name
    assert "RateLimit-Policy" in check["200"]["headers"]
    assert check["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}
    for label, op in operations(document).items():
        if "401" in op["responses"]:
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"], label


def test_the_key_parameter_carries_its_rules(document: dict[str, Any]) -> None:
    for label, op in operations(document).items():
        for parameter in op.get("parameters", []):
            if parameter["name"] == "key":
                schema = parameter["schema"]
                assert schema["pattern"] == KEY_PATTERN, label
                assert (schema["minLength"], schema["maxLength"]) == (1, 256), label


def test_request_bodies_reject_unknown_fields(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name in ("Limit", "CheckRequest", "BatchRequest", "BatchItem"):
        assert schemas[name]["additionalProperties"] is False, name
    rules = schemas["Limit"]["allOf"]
    assert {"if", "then"} <= set(rules[0])
