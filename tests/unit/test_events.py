"""The config stream protocol: the tagged union, its validation and its JSON Schema.

The schema is checked with a small validator of the keywords it uses (no jsonschema
dependency): every sample the typed decoder accepts, the schema accepts, and the reverse.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import (
    AuditEvent,
    DeleteLimit,
    LimitChanged,
    SetLimit,
    config_event_decoder,
    config_event_schema,
)
from schemas.limits import KEY_PATTERN, Limit
from throttler.cli import schema_text

DOCS_SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "config-event.schema.json"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# -- a validator of the JSON Schema keywords msgspec emits --------------------------------


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), ref
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    result: dict[str, Any] = node
    return result


def _ecma_search(pattern: str, value: str) -> bool:
    """JSON Schema patterns are ECMA-262: ``$`` matches only at the very end of the string
    (Python's also matches before a final newline)."""
    match = re.search(pattern, value)
    return match is not None and (not pattern.endswith("$") or match.end() == len(value))


def _type_ok(value: object, kind: str) -> bool:
    checks: dict[str, bool] = {
        "object": isinstance(value, dict),
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "null": value is None,
    }
    return checks[kind]


def _valid(value: object, schema: dict[str, Any], root: dict[str, Any]) -> bool:  # noqa: C901, PLR0911, PLR0912
    known = {"$ref", "anyOf", "type", "enum", "pattern", "minimum", "maximum", "maxLength"}
    known |= {"required", "properties", "additionalProperties"}
    known |= {"$schema", "$defs", "title", "description", "default", "examples", "discriminator"}
    assert set(schema) <= known, f"the test validator does not know {set(schema) - known}"
    if "$ref" in schema and not _valid(value, _resolve(root, schema["$ref"]), root):
        return False
    if "anyOf" in schema and not any(_valid(value, s, root) for s in schema["anyOf"]):
        return False
    if "type" in schema and not _type_ok(value, schema["type"]):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, str):
        if "pattern" in schema and not _ecma_search(schema["pattern"], value):
            return False
        if len(value) > schema.get("maxLength", len(value)):
            return False
    if _type_ok(value, "integer") and not (
        schema.get("minimum", value) <= value <= schema.get("maximum", value)
    ):
        return False
    if isinstance(value, dict):
        if not set(schema.get("required", ())) <= set(value):
            return False
        props: dict[str, Any] = schema.get("properties", {})
        if schema.get("additionalProperties") is False and not set(value) <= set(props):
            return False
        for name, sub in props.items():
            if name in value and not _valid(value[name], sub, root):
                return False
    return True


def schema_accepts(event: object) -> bool:
    schema = config_event_schema()
    return _valid(event, schema, schema)


def decoder_accepts(event: object) -> bool:
    try:
        config_event_decoder.decode(json.dumps(event))
    except msgspec.ValidationError:
        return False
    return True


# -- the union -------------------------------------------------------------------------------


def test_set_limit_round_trips_with_its_tag() -> None:
    event = SetLimit(
        key="free:client-123",
        limit=Limit(requests=100, window_ms=60_000, algorithm="gcra", burst=10),
        actor="ops",
        request_id="r-1",
        submitted_at_ms=1_700_000_000_000,
        traceparent=TRACEPARENT,
    )
    wire = msgspec.json.encode(event)
    assert json.loads(wire)["type"] == "set_limit"
    assert config_event_decoder.decode(wire) == event


def test_delete_needs_only_type_and_key() -> None:
    event = config_event_decoder.decode(b'{"type": "delete_limit", "key": "gone"}')
    assert event == DeleteLimit(key="gone")
    assert (event.actor, event.request_id, event.submitted_at_ms) == ("unknown", "", 0)
    assert event.traceparent is None


def test_a_limit_gets_its_defaults() -> None:
    event = config_event_decoder.decode(
        b'{"type": "set_limit", "key": "k", "limit": {"requests": 5, "window_ms": 1000}}'
    )
    assert isinstance(event, SetLimit)
    assert event.limit == Limit(requests=5, window_ms=1000, algorithm="token_bucket", burst=5)


def test_unknown_top_level_fields_are_ignored_for_schema_evolution() -> None:
    event = config_event_decoder.decode(b'{"type": "delete_limit", "key": "k", "added_in_v9": 1}')
    assert event == DeleteLimit(key="k")


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b'{"type": "set_limit", "limit": {"requests": 1, "window_ms": 1}}', "`key`"),
        (b'{"type": "set_limit", "key": "k"}', "`limit`"),
        (b'{"type": "frobnicate", "key": "k"}', "$.type"),
        (b'{"key": "k"}', "`type`"),
        (b'{"type": "delete_limit", "key": "a{b}"}', "$.key"),
        (b'{"type": "delete_limit", "key": ""}', "$.key"),
        (
            b'{"type": "set_limit", "key": "k", "limit": {"requests": "ten", "window_ms": 1}}',
            "$.limit.requests",
        ),
        (
            b'{"type": "set_limit", "key": "k", "limit": {"requests": 0, "window_ms": 1}}',
            "$.limit.requests",
        ),
        (
            b'{"type": "set_limit", "key": "k", "limit": {"requests": 1, "window_ms": 1, "x": 1}}',
            "`x`",
        ),
        (b'{"type": "delete_limit", "key": "k", "traceparent": "not-a-trace"}', "$.traceparent"),
        (b'{"type": "delete_limit", "key": "k", "submitted_at_ms": -1}', "$.submitted_at_ms"),
    ],
)
def test_invalid_events_are_rejected_naming_the_field(body: bytes, names: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        config_event_decoder.decode(body)
    assert names in str(info.value)


def test_burst_is_refused_for_window_algorithms() -> None:
    body = (
        b'{"type": "set_limit", "key": "k",'
        b' "limit": {"requests": 5, "window_ms": 1000, "algorithm": "fixed_window", "burst": 2}}'
    )
    with pytest.raises(msgspec.ValidationError, match="burst applies to token_bucket and gcra"):
        config_event_decoder.decode(body)


def test_garbage_is_a_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        config_event_decoder.decode(b"not json{")


def test_audit_and_notification_records_round_trip() -> None:
    limit = Limit(requests=1, window_ms=1000)
    audit = AuditEvent(
        config_id="1-0",
        type="set_limit",
        key="k",
        result="replaced",
        before=Limit(requests=2, window_ms=1000),
        after=limit,
        actor="a",
        request_id="r",
        submitted_at_ms=1,
        applied_at_ms=2,
        worker="w",
        traceparent=TRACEPARENT,
    )
    assert msgspec.json.decode(msgspec.json.encode(audit), type=AuditEvent) == audit
    note = LimitChanged(
        event_id="1-0", key="k", result="created", limit=limit, request_id="r", applied_at_ms=2
    )
    wire = json.loads(msgspec.json.encode(note))
    assert wire["type"] == "limit_changed"
    assert wire["before"] is None
    assert wire["limit"] == {
        "requests": 1,
        "window_ms": 1000,
        "algorithm": "token_bucket",
        "burst": 1,
    }


# -- the JSON Schema ------------------------------------------------------------------------


def test_docs_schema_is_the_generated_one() -> None:
    """Fails when schemas/events.py changes and docs/config-event.schema.json does not."""
    assert DOCS_SCHEMA.read_text(encoding="utf-8") == schema_text(), (
        "docs/config-event.schema.json is out of date: run "
        "`throttler schema > docs/config-event.schema.json`"
    )


def test_schema_structure() -> None:
    schema = config_event_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    tags = {
        "set_limit": "SetLimit",
        "set_limits": "SetLimits",
        "delete_limit": "DeleteLimit",
        "reset_key": "ResetKey",
        "set_policy": "SetPolicy",
        "delete_policy": "DeletePolicy",
        "set_rls_domain": "SetRlsDomain",
        "delete_rls_domain": "DeleteRlsDomain",
    }
    assert schema["anyOf"] == [{"$ref": f"#/$defs/{name}"} for name in tags.values()]
    assert schema["discriminator"] == {
        "propertyName": "type",
        "mapping": {tag: f"#/$defs/{name}" for tag, name in tags.items()},
    }
    defs: Any = schema["$defs"]
    assert defs["SetLimit"]["required"] == ["type", "key", "limit"]
    assert defs["DeleteLimit"]["required"] == ["type", "key"]
    common = {"type", "key", "actor", "request_id", "submitted_at_ms", "traceparent"}
    assert set(defs["DeleteLimit"]["properties"]) == common
    assert set(defs["SetLimit"]["properties"]) == common | {"limit"}
    assert defs["SetLimit"]["properties"]["key"]["pattern"] == KEY_PATTERN
    assert defs["Limit"]["additionalProperties"] is False
    assert set(defs["Limit"]["properties"]) == {
        "requests",
        "window_ms",
        "algorithm",
        "burst",
        "calendar",
    }


SAMPLE = {
    "type": "set_limit",
    "key": "partner:acme",
    "limit": {"requests": 500, "window_ms": 60000, "algorithm": "gcra", "burst": 50},
    "actor": "billing-service",
    "request_id": "7d0c6a52",
    "submitted_at_ms": 1_760_000_000_000,
    "traceparent": TRACEPARENT,
}


def _with(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(json.dumps(SAMPLE))
    for path, value in changes.items():
        node = event
        *parents, last = path.split("__")
        for name in parents:
            node = node[name]
        if value is _DROP:
            del node[last]
        else:
            node[last] = value
    return event


_DROP = object()

SAMPLES = [
    SAMPLE,
    {"type": "delete_limit", "key": "gone"},
    {"type": "set_limit", "key": "k", "limit": {"requests": 1, "window_ms": 1}},
    _with(traceparent=None),
    _with(limit__burst=None),
    _with(key="a{b}"),
    _with(key=""),
    _with(key="x" * 257),
    _with(type="frobnicate"),
    _with(type=_DROP),
    _with(key=_DROP),
    _with(limit=_DROP),
    _with(limit__requests=0),
    _with(limit__requests="ten"),
    _with(limit__requests=True),
    _with(limit__window_ms=2_678_400_001),
    _with(limit__algorithm="leaky"),
    _with(limit__extra=1),
    _with(actor="a" * 257),
    _with(submitted_at_ms=-5),
    _with(traceparent="00-xyz"),
    "not an object",
    None,
]


@pytest.mark.parametrize("event", SAMPLES)
def test_schema_and_decoder_agree(event: object) -> None:
    assert schema_accepts(event) == decoder_accepts(event)


def test_a_key_with_a_trailing_newline_is_refused() -> None:
    event = _with(key="k\n")
    assert not schema_accepts(event)
    assert not decoder_accepts(event)


def test_schema_validates_the_sample_event() -> None:
    assert schema_accepts(SAMPLE)
    assert not schema_accepts(_with(key="a{b}"))
    assert not schema_accepts(_with(limit__requests="ten"))


limits: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict,
    requests=st.integers(min_value=-2, max_value=1_000_000_002),
    window_ms=st.integers(min_value=0, max_value=3_000_000_000),
    algorithm=st.sampled_from(["token_bucket", "gcra", "leaky"]),
)
events: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.builds(
        dict,
        type=st.sampled_from(["set_limit", "delete_limit", "other"]),
        # Trailing newlines: see test_a_key_with_a_trailing_newline_is_refused.
        key=st.one_of(
            st.from_regex(KEY_PATTERN, fullmatch=True),
            st.text(max_size=5).filter(lambda k: not k.endswith("\n")),
        ),
        limit=limits,
        submitted_at_ms=st.integers(min_value=-1, max_value=2**40),
    ),
)


@given(events)
def test_schema_and_decoder_agree_on_generated_events(event: dict[str, Any]) -> None:
    assert schema_accepts(event) == decoder_accepts(event)
