"""The config stream protocol: what producers publish, what workers record and announce.

A config stream entry has one field, ``event``, holding the JSON of a :data:`ConfigEvent`
(a tagged union on ``type``). Producers in any language publish the same JSON; its JSON
Schema is generated from these Structs (``throttler schema``) and kept in
``docs/config-event.schema.json``.

Schema evolution (msgspec's rules): a new field always gets a default, a field's type
never changes, unknown fields are ignored so older workers read newer entries.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.limits import KEY_PATTERN, Limit

__all__ = [
    "AuditEvent",
    "AuditResult",
    "ConfigEvent",
    "DeadLetter",
    "DeadLetterEntry",
    "DeleteLimit",
    "LimitChanged",
    "SetLimit",
    "config_event_decoder",
    "config_event_schema",
]

Key = Annotated[
    str,
    msgspec.Meta(
        pattern=KEY_PATTERN,
        description="The rate-limit key: 1-256 characters of A-Z a-z 0-9 _ - . :",
        examples=["free:client-123"],
    ),
]
Actor = Annotated[
    str, msgspec.Meta(max_length=256, description="Who asked for the change (free text).")
]
RequestId = Annotated[
    str,
    msgspec.Meta(max_length=128, description="Correlates the change with its request and answer."),
]
Traceparent = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        description="W3C traceparent of the request that produced the change.",
    ),
]
Millis = Annotated[int, msgspec.Meta(ge=0, description="Unix time in milliseconds.")]


class _Event(msgspec.Struct, tag_field="type", kw_only=True):
    key: Key
    actor: Actor = "unknown"
    request_id: RequestId = ""
    submitted_at_ms: Millis = 0
    traceparent: Traceparent | None = None


class SetLimit(_Event, tag="set_limit", kw_only=True):
    """Create or replace the key's limit."""

    limit: Limit


class DeleteLimit(_Event, tag="delete_limit", kw_only=True):
    """Remove the key's limit and state."""


ConfigEvent = SetLimit | DeleteLimit

AuditResult = Literal[
    "created",  # applied: the key had no limit
    "replaced",  # applied: the key's limit was replaced
    "deleted",  # applied: the limit was removed
    "not_found",  # applied: a delete of a key that had no limit
    "stale",  # skipped: the key already holds a newer change
    "redelivered",  # this entry's change was already in place (an earlier delivery applied it)
]


class AuditEvent(msgspec.Struct, kw_only=True):
    """What happened to one config entry (one audit entry per config entry)."""

    config_id: str
    type: str
    key: str
    result: AuditResult
    before: Limit | None
    after: Limit | None
    actor: str
    request_id: str
    submitted_at_ms: int
    applied_at_ms: int
    worker: str
    traceparent: str | None = None


class LimitChanged(msgspec.Struct, kw_only=True):
    """The limit-change notification, published on ``<prefix>:limits`` (Redis Pub/Sub)."""

    type: Literal["limit_changed"] = "limit_changed"
    event_id: str
    key: str
    result: AuditResult
    limit: Limit | None
    before: Limit | None = None
    request_id: str
    applied_at_ms: int


class DeadLetter(msgspec.Struct, kw_only=True):
    """A config entry no worker could apply, with the reason."""

    config_id: str
    reason: str
    fields: dict[str, str]
    deliveries: int
    dead_at_ms: int
    worker: str


class DeadLetterEntry(msgspec.Struct):
    """A dead letter and its id in the dead-letter stream, as `GET /dead-letters` and
    `throttler dead-letters list` show it."""

    id: str
    letter: DeadLetter


config_event_decoder = msgspec.json.Decoder(ConfigEvent)


def config_event_schema() -> dict[str, object]:
    """The JSON Schema of a config event (the value of the ``event`` field)."""
    schema: dict[str, object] = msgspec.json.schema(ConfigEvent)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Throttler config event"
    return schema
