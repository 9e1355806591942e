"""Apply a batch of config entries: decode, apply in order, announce, ack + audit.

Per batch: one pipelined round trip applies every valid entry (idempotent, ordered by entry
id, see ``core/lua/apply.lua``); one more publishes the notifications and runs ``finish``
for each entry, which acks it and appends its audit record atomically. An entry is acked
only after all of that; an entry whose apply failed stays pending and is retried (see
:mod:`workers.recovery`). Invalid entries go to the dead-letter stream at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from core.config_store import ApplyResult, PolicyResult
from core.domains import DomainResult, apply_domain
from core.errors import RedisUnavailableError
from core.gateway import text
from core.keys import APPLIERS
from core.scripts import FINISH
from core.streams import EVENT_FIELD, encode, now_ms
from core.telemetry import Telemetry, context_from
from schemas.events import (
    AuditEvent,
    AuditResult,
    ConfigEvent,
    DeadLetter,
    KeyEvent,
    LimitChanged,
    PolicyChanged,
    PolicyEvent,
    ResetKey,
    RlsDomainChanged,
    RlsDomainEvent,
    SetLimit,
    SetLimits,
    SetPolicy,
    SetRlsDomain,
    config_event_decoder,
)

if TYPE_CHECKING:
    from core.config_store import ConfigStore
    from core.gateway import Gateway
    from core.keys import KeySpace
    from core.metrics import Metrics
    from schemas.limits import Limit

__all__ = ["Applier", "Entry"]

_log = logging.getLogger("throttler.worker")

#: (entry id, fields) as redis-py returns stream entries
Entry = tuple[bytes | str, dict[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class _Done:
    entry_id: str
    stream: str
    record: bytes
    notification: bytes | None
    operation: str = "invalid"
    result: str = "dead_letter"


def _fields(fields: dict[bytes, bytes]) -> dict[str, str]:
    # Any producer may write any bytes: a field name that is not UTF-8 must not stop the batch.
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}


#: What a dead letter keeps of its entry: anyone with Redis write access can add an entry
#: of any size, and a dead letter must not copy it whole (nor GET /dead-letters serve it).
DEAD_FIELDS = 16  # fields kept
DEAD_FIELD_BYTES = 4096  # bytes kept of each field's name + value
DEAD_REASON_CHARS = 1000


def _kept_fields(fields: dict[bytes, bytes]) -> tuple[dict[str, str], bool]:
    """The entry's fields as a dead letter keeps them, and whether anything was cut."""
    kept: dict[str, str] = {}
    cut = len(fields) > DEAD_FIELDS
    for name, value in list(fields.items())[:DEAD_FIELDS]:
        short_name, short_value = name[:256], value[: max(0, DEAD_FIELD_BYTES - len(name[:256]))]
        cut = cut or (short_name, short_value) != (name, value)
        kept.update(_fields({short_name: short_value}))
    return kept, cut


def _tag(event: ConfigEvent) -> str:
    return str(type(event).__struct_config__.tag)


def _change(event: KeyEvent) -> Any:
    """A key event as ConfigStore.apply_many takes it."""
    if isinstance(event, SetLimit):
        return event.limit
    if isinstance(event, SetLimits):
        return (event.limits, event.shadow)
    if isinstance(event, ResetKey):
        return "reset"
    return None  # DeleteLimit


def _limits_after(event: ConfigEvent, result: ApplyResult) -> tuple[list[Limit] | None, bool]:
    """The key's limits after an applied change (a reset leaves them as they were)."""
    if isinstance(event, SetLimit):
        return [event.limit], False
    if isinstance(event, SetLimits):
        return list(event.limits), event.shadow
    if isinstance(event, ResetKey) and result.previous is not None:
        return list(result.previous.limits), result.previous.shadow
    return None, False


def _operation(event: ConfigEvent) -> str:
    """The ``operation`` label of throttler_config_changes_total."""
    return {
        "set_limit": "set",
        "set_limits": "set",
        "delete_limit": "delete",
        "reset_key": "reset",
        "set_policy": "set_policy",
        "delete_policy": "delete_policy",
        "set_rls_domain": "set_rls_domain",
        "delete_rls_domain": "delete_rls_domain",
    }[_tag(event)]


def _apply_span_name(event: ConfigEvent) -> str:
    if isinstance(event, PolicyEvent):
        return "apply policy change"
    if isinstance(event, RlsDomainEvent):
        return "apply rls domain change"
    return "apply limit change"


def _audit_result(outcome: str) -> AuditResult:
    if outcome == "duplicate":
        # Same version already in place, yet the entry was still pending: an earlier
        # delivery applied it and died before its ack (ack and audit are one atomic step).
        return "redelivered"
    return outcome  # type: ignore[return-value]


class Applier:
    """Applies config entries for one consumer of the ``appliers`` group."""

    def __init__(
        self,
        gateway: Gateway,
        keys: KeySpace,
        store: ConfigStore,
        consumer: str,
        *,
        maxlen: int,
        max_deliveries: int,
        telemetry: Telemetry | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._gateway = gateway
        self._metrics = metrics
        self._keys = keys
        self._store = store
        self.consumer = consumer
        self._maxlen = maxlen
        self._max_deliveries = max_deliveries
        self._tracer = (telemetry or Telemetry()).tracer
        self.applied = 0

    async def handle(self, entries: list[Entry], deliveries: dict[str, int] | None = None) -> int:
        """Process one batch; returns how many entries were finished (acked)."""
        done: list[_Done] = []
        valid: list[tuple[str, ConfigEvent, trace.Span]] = []
        last_try: dict[str, tuple[dict[bytes, bytes], int]] = {}
        for raw_id, fields in entries:
            entry_id = text(raw_id)
            count = (deliveries or {}).get(entry_id, 1)
            if count > self._max_deliveries:
                done.append(self._dead(entry_id, fields, f"delivered {count} times", count))
                continue
            try:
                event = config_event_decoder.decode(fields[EVENT_FIELD.encode()])
            except KeyError:
                done.append(self._dead(entry_id, fields, "no 'event' field", count))
                continue
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                done.append(self._dead(entry_id, fields, f"invalid event: {exc}", count))
                continue
            span = self._tracer.start_span(
                f"process {self._keys.config_stream}",
                context=context_from(event.traceparent),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "redis",
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": self._keys.config_stream,
                    "messaging.consumer.group.name": APPLIERS,
                    "messaging.message.id": entry_id,
                    "throttler.event.type": _tag(event),
                },
            )
            valid.append((entry_id, event, span))
            if count >= self._max_deliveries:
                last_try[entry_id] = (fields, count)
        if valid:
            done.extend(await self._apply(valid, last_try))
        if done:
            await self._finish(done)
        return len(done)

    async def _apply(
        self,
        valid: list[tuple[str, ConfigEvent, trace.Span]],
        last_try: dict[str, tuple[dict[bytes, bytes], int]],
    ) -> list[_Done]:
        spans = [
            self._tracer.start_span(
                _apply_span_name(e),
                context=trace.set_span_in_context(span),
                attributes={"throttler.operation": _operation(e)},
            )
            for _, e, span in valid
        ]
        try:
            results = await self._results(valid)
        except Exception as exc:
            for span in (*spans, *(s for _, _, s in valid)):
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, "apply failed"))
                span.end()
            raise
        done = []
        for (entry_id, event, span), apply_span, result in zip(valid, spans, results, strict=True):
            if isinstance(result, Exception):
                # Left pending: redelivered after WORKER_CLAIM_IDLE_MS; the last of
                # WORKER_MAX_DELIVERIES attempts dead-letters it with the error.
                with trace.use_span(apply_span, end_on_exit=False):  # lines carry its trace id
                    _log.error("apply of %s failed: %s", entry_id, result)
                    for s in (apply_span, span):
                        s.record_exception(result)
                        s.set_status(Status(StatusCode.ERROR, str(result)))
                        s.end()
                    if entry_id in last_try:
                        fields, count = last_try[entry_id]
                        reason = (
                            f"apply failed on delivery {count} of {self._max_deliveries}: {result}"
                        )
                        done.append(self._dead(entry_id, fields, reason, count))
                continue
            apply_span.set_attribute("throttler.result", result.outcome)
            apply_span.end()
            done.append(self._applied(entry_id, event, result, apply_span))
            span.end()
        return done

    async def _results(
        self, valid: list[tuple[str, ConfigEvent, trace.Span]]
    ) -> list[ApplyResult | PolicyResult | DomainResult | Exception]:
        """Key changes in one round trip, in order; policy and domain changes (rare) one by
        one."""
        changes = [
            (e.key, _change(e), entry_id) for entry_id, e, _ in valid if isinstance(e, KeyEvent)
        ]
        applied = iter(await self._store.apply_many(changes) if changes else [])
        results: list[ApplyResult | PolicyResult | DomainResult | Exception] = []
        for entry_id, event, _ in valid:
            if isinstance(event, KeyEvent):
                results.append(next(applied))
                continue
            try:
                if isinstance(event, RlsDomainEvent):
                    config = event.config if isinstance(event, SetRlsDomain) else None
                    results.append(
                        await apply_domain(
                            self._gateway, self._keys, event.domain, config, entry_id
                        )
                    )
                    continue
                policy = event.policy if isinstance(event, SetPolicy) else None
                results.append(await self._store.apply_policy(event.name, policy, entry_id))
            except RedisUnavailableError:
                raise
            except Exception as exc:  # returned per change, as apply_many does
                results.append(exc)
        return results

    def _applied(
        self,
        entry_id: str,
        event: ConfigEvent,
        result: ApplyResult | PolicyResult | DomainResult,
        span: trace.Span,
    ) -> _Done:
        outcome = _audit_result(result.outcome)
        ctx = span.get_span_context()
        traceparent = (
            f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
            if ctx.is_valid
            else event.traceparent
        )
        at = now_ms()
        common: dict[str, Any] = {
            "config_id": entry_id,
            "type": _tag(event),
            "result": outcome,
            "actor": event.actor,
            "request_id": event.request_id,
            "submitted_at_ms": event.submitted_at_ms,
            "applied_at_ms": at,
            "worker": self.consumer,
            "traceparent": traceparent,
        }
        note: LimitChanged | PolicyChanged | RlsDomainChanged
        if isinstance(event, RlsDomainEvent):
            audit = AuditEvent(**common, key="", before=None, after=None, rls_domain=event.domain)
            note = RlsDomainChanged(
                event_id=entry_id,
                domain=event.domain,
                result=outcome,
                request_id=event.request_id,
                applied_at_ms=at,
            )
        elif isinstance(event, PolicyEvent):
            assert isinstance(result, PolicyResult)
            after_policy = event.policy if isinstance(event, SetPolicy) else None
            if outcome in ("stale", "conflict"):
                after_policy = None
            audit = AuditEvent(
                **common,
                key="",
                before=None,
                after=None,
                policy=event.name,
                before_policy=result.before,
                after_policy=after_policy,
            )
            note = PolicyChanged(
                event_id=entry_id,
                name=event.name,
                result=outcome,
                policy=after_policy,
                before=result.before,
                request_id=event.request_id,
                applied_at_ms=at,
            )
        else:
            assert isinstance(result, ApplyResult)
            limits, shadow = _limits_after(event, result)
            if outcome == "stale":
                limits, shadow = None, False
            single = limits[0] if limits is not None and len(limits) == 1 and not shadow else None
            before = result.previous
            audit = AuditEvent(
                **common,
                key=event.key,
                before=result.before,
                after=single,
                before_limits=list(before.limits) if before and before.single is None else None,
                after_limits=limits if limits is not None and single is None else None,
                shadow=shadow,
            )
            note = LimitChanged(
                event_id=entry_id,
                key=event.key,
                result=outcome,
                limit=single,
                before=result.before,
                request_id=event.request_id,
                applied_at_ms=at,
                limits=limits if single is None else None,
                shadow=shadow,
                before_limits=audit.before_limits,
                before_shadow=before.shadow if before else False,
            )
        return _Done(
            entry_id,
            self._keys.audit_stream,
            encode(audit),
            encode(note),
            _operation(event),
            outcome,
        )

    def _dead(self, entry_id: str, fields: dict[bytes, bytes], reason: str, count: int) -> _Done:
        _log.warning("dead-lettering config entry %s: %s", entry_id, reason)
        kept, truncated = _kept_fields(fields)
        letter = DeadLetter(
            config_id=entry_id,
            reason=reason[:DEAD_REASON_CHARS],
            fields=kept,
            truncated=truncated,
            deliveries=count,
            dead_at_ms=now_ms(),
            worker=self.consumer,
        )
        return _Done(entry_id, self._keys.dead_stream, encode(letter), None)

    async def _finish(self, done: list[_Done]) -> None:
        notes = [item.notification for item in done if item.notification is not None]
        calls = [
            (
                [self._keys.config_stream, item.stream],
                [APPLIERS, item.entry_id, self._maxlen, EVENT_FIELD, item.record],
            )
            for item in done
        ]
        if notes:
            await self._gateway.publish_many(self._keys.notify_channel, notes)
        replies = await self._gateway.run_many(FINISH, calls)
        for reply in replies:
            if isinstance(reply, RedisUnavailableError):
                raise reply
        for item, reply in zip(done, replies, strict=True):
            if isinstance(reply, Exception):
                _log.error("finish of %s failed: %s", item.entry_id, reply)
            elif reply is not None:
                self.applied += 1
                if self._metrics is not None:
                    self._metrics.config_changes.labels(item.operation, item.result).inc()
