"""The ``audit`` group: one span and one structured log line per audit entry."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec
from opentelemetry.trace import SpanKind

from core.gateway import text
from core.keys import AUDITORS
from core.streams import EVENT_FIELD
from core.telemetry import Telemetry, context_from
from schemas.events import AuditEvent

if TYPE_CHECKING:
    from core.gateway import Gateway
    from core.keys import KeySpace
    from workers.applier import Entry

__all__ = ["Auditor"]

_log = logging.getLogger("throttler.audit")
_decoder = msgspec.json.Decoder(AuditEvent)


class Auditor:
    def __init__(
        self, gateway: Gateway, keys: KeySpace, consumer: str, telemetry: Telemetry | None = None
    ) -> None:
        self._gateway = gateway
        self._keys = keys
        self.consumer = consumer
        self._tracer = (telemetry or Telemetry()).tracer

    async def handle(self, entries: list[Entry]) -> int:
        ids = []
        for raw_id, fields in entries:
            entry_id = text(raw_id)
            ids.append(entry_id)
            try:
                event = _decoder.decode(fields[EVENT_FIELD.encode()])
            except (KeyError, msgspec.ValidationError, msgspec.DecodeError) as exc:
                _log.warning("unreadable audit entry %s: %s", entry_id, exc)
                continue
            with self._tracer.start_as_current_span(
                f"audit {event.type}",
                context=context_from(event.traceparent),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "redis",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": self._keys.audit_stream,
                    "messaging.consumer.group.name": AUDITORS,
                    "messaging.message.id": entry_id,
                    "throttler.config_id": event.config_id,
                    "throttler.result": event.result,
                    "throttler.actor": event.actor,
                },
            ):
                _log.info(
                    "config change %s: %s %s",
                    event.result,
                    event.type,
                    event.key,
                    extra={
                        "event": "audit",
                        "config_id": event.config_id,
                        "key": event.key,
                        "result": event.result,
                        "actor": event.actor,
                        "request_id": event.request_id,
                        "worker": event.worker,
                        "latency_ms": max(0, event.applied_at_ms - event.submitted_at_ms),
                    },
                )
        if ids:
            await self._gateway.call(
                "ack", self._gateway.client.xack, self._keys.audit_stream, AUDITORS, *ids
            )
        return len(ids)
