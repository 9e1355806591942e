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

from schemas.limits import KEY_PATTERN, POLICY_NAME_PATTERN, Limit, Limits, Policy, Shadow
from schemas.rls import DomainName, RlsDomain

__all__ = [
    "AuditEvent",
    "AuditResult",
    "ConfigEvent",
    "DeadLetter",
    "DeadLetterEntry",
    "DeleteLimit",
    "DeletePolicy",
    "DeleteRlsDomain",
    "KeyEvent",
    "LimitChanged",
    "Notification",
    "PolicyChanged",
    "PolicyEvent",
    "ResetKey",
    "RlsDomainChanged",
    "RlsDomainEvent",
    "SetLimit",
    "SetLimits",
    "SetPolicy",
    "SetRlsDomain",
    "config_event_decoder",
    "config_event_schema",
    "notification_decoder",
]

Key = Annotated[
    str,
    msgspec.Meta(
        pattern=KEY_PATTERN,
        description="The rate-limit key: at most 256 bytes of UTF-8 without whitespace, "
        "control characters, / { } or *",
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
PolicyName = Annotated[
    str,
    msgspec.Meta(
        pattern=POLICY_NAME_PATTERN,
        description="A policy's name: 1-64 characters of A-Z a-z 0-9 _ - . :",
        examples=["free-tier"],
    ),
]


class _Event(msgspec.Struct, tag_field="type", kw_only=True):
    actor: Actor = "unknown"
    request_id: RequestId = ""
    submitted_at_ms: Millis = 0
    traceparent: Traceparent | None = None


class KeyEvent(_Event, kw_only=True):
    """A change to one rate-limit key."""

    key: Key


class SetLimit(KeyEvent, tag="set_limit", kw_only=True):
    """Create or replace the key's limit (one limit)."""

    limit: Limit


class SetLimits(KeyEvent, tag="set_limits", kw_only=True):
    """Create or replace the key's limits (one to eight, and the shadow flag)."""

    limits: Limits
    shadow: Shadow = False


class DeleteLimit(KeyEvent, tag="delete_limit", kw_only=True):
    """Remove the key's limits and state."""


class ResetKey(KeyEvent, tag="reset_key", kw_only=True):
    """Clear what the key has spent under every limit; its limits stay."""


class PolicyEvent(_Event, kw_only=True):
    """A change to one policy."""

    name: PolicyName


class SetPolicy(PolicyEvent, tag="set_policy", kw_only=True):
    """Create or replace a policy."""

    policy: Policy


class DeletePolicy(PolicyEvent, tag="delete_policy", kw_only=True):
    """Remove a policy (the keys it matched fall back to the next match)."""


class RlsDomainEvent(_Event, kw_only=True):
    """A change to one domain of Envoy's rate limit service (docs/envoy.md)."""

    domain: DomainName


class SetRlsDomain(RlsDomainEvent, tag="set_rls_domain", kw_only=True):
    """Create or replace a domain: its whole descriptor tree."""

    config: RlsDomain

    def __post_init__(self) -> None:
        if self.config.domain != self.domain:
            raise ValueError(
                f"domain {self.domain!r} differs from its config's domain {self.config.domain!r}"
            )


class DeleteRlsDomain(RlsDomainEvent, tag="delete_rls_domain", kw_only=True):
    """Remove a domain (its descriptors then match nothing: answered OK)."""


ConfigEvent = (
    SetLimit
    | SetLimits
    | DeleteLimit
    | ResetKey
    | SetPolicy
    | DeletePolicy
    | SetRlsDomain
    | DeleteRlsDomain
)

AuditResult = Literal[
    "created",  # applied: the key (policy) had no limit (did not exist)
    "replaced",  # applied: the key's limits (the policy) were replaced
    "deleted",  # applied: the limits (the policy) were removed
    "not_found",  # applied: a delete of a key that had no limit (a policy that did not exist)
    "reset",  # applied: what the key had spent was cleared
    "stale",  # skipped: the key (policy) already holds a newer change
    "redelivered",  # this entry's change was already in place (an earlier delivery applied it)
    "conflict",  # skipped: a pattern of the policy belongs to another policy
]


class AuditEvent(msgspec.Struct, kw_only=True):
    """What happened to one config entry (one audit entry per config entry)."""

    config_id: str
    type: str
    key: str  # "" for a policy event
    result: AuditResult
    before: Limit | None  # a key's single limit
    after: Limit | None
    actor: str
    request_id: str
    submitted_at_ms: int
    applied_at_ms: int
    worker: str
    traceparent: str | None = None
    before_limits: list[Limit] | None = None  # a key's limits when it had several
    after_limits: list[Limit] | None = None
    shadow: bool = False  # the key's limits (after) are in shadow mode
    policy: str | None = None  # a policy event: the policy's name
    before_policy: Policy | None = None
    after_policy: Policy | None = None
    rls_domain: str | None = None  # an Envoy RLS domain event: the domain


class LimitChanged(msgspec.Struct, tag_field="type", tag="limit_changed", kw_only=True):
    """A key's limits changed (or its usage was reset): published on ``<prefix>:limits``
    (Redis Pub/Sub) once applied."""

    event_id: str
    key: str
    result: AuditResult
    limit: Limit | None
    before: Limit | None = None
    request_id: str
    applied_at_ms: int
    limits: list[Limit] | None = None  # the key's limits when it has several
    shadow: bool = False
    before_limits: list[Limit] | None = None  # ... and before, when it had several
    before_shadow: bool = False


class PolicyChanged(msgspec.Struct, tag_field="type", tag="policy_changed", kw_only=True):
    """A policy changed: published on ``<prefix>:limits`` once applied."""

    event_id: str
    name: str
    result: AuditResult
    policy: Policy | None
    before: Policy | None = None
    request_id: str
    applied_at_ms: int


class RlsDomainChanged(msgspec.Struct, tag_field="type", tag="rls_domain_changed", kw_only=True):
    """An Envoy RLS domain changed: published on ``<prefix>:limits`` once applied."""

    event_id: str
    domain: str
    result: AuditResult
    request_id: str
    applied_at_ms: int


Notification = LimitChanged | PolicyChanged | RlsDomainChanged


class DeadLetter(msgspec.Struct, kw_only=True):
    """A config entry no worker could apply, with the reason."""

    config_id: str
    reason: str
    fields: dict[str, str]
    deliveries: int
    dead_at_ms: int
    worker: str
    #: True when the entry was larger than a dead letter keeps (16 fields of 4 KiB): the
    #: fields are cut, and replaying it would publish the cut entry.
    truncated: bool = False


class DeadLetterEntry(msgspec.Struct):
    """A dead letter and its id in the dead-letter stream, as `GET /dead-letters` and
    `throttler dead-letters list` show it."""

    id: str
    letter: DeadLetter


config_event_decoder = msgspec.json.Decoder(ConfigEvent)
notification_decoder = msgspec.json.Decoder(Notification)


def config_event_schema() -> dict[str, object]:
    """The JSON Schema of a config event (the value of the ``event`` field)."""
    schema: dict[str, object] = msgspec.json.schema(ConfigEvent)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Throttler config event"
    return schema
