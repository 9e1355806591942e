"""Config changes from the API: publish on the config stream, then wait (bounded) until a
worker has applied them, so the caller reads its own write."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from opentelemetry.trace import SpanKind

from core.streams import now_ms, publish
from core.telemetry import Telemetry, current_traceparent
from schemas.events import DeleteLimit, LimitChanged, SetLimit

if TYPE_CHECKING:
    from core.gateway import Gateway
    from core.keys import KeySpace
    from core.notifications import NotificationHub
    from schemas.limits import Limit

__all__ = ["Mutations", "Submitted"]


@dataclass(frozen=True, slots=True)
class Submitted:
    """The entry id of a published change, and its outcome if applied in time."""

    event_id: str
    outcome: LimitChanged | None


class Mutations:
    def __init__(
        self,
        gateway: Gateway,
        keys: KeySpace,
        hub: NotificationHub,
        *,
        wait_ms: int,
        maxlen: int,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._gateway = gateway
        self._keys = keys
        self._hub = hub
        self._wait_s = wait_ms / 1000
        self._maxlen = maxlen
        self._tracer = (telemetry or Telemetry()).tracer

    async def set(self, key: str, limit: Limit, actor: str) -> Submitted:
        return await self._submit(key, limit, actor)

    async def delete(self, key: str, actor: str) -> Submitted:
        return await self._submit(key, None, actor)

    async def _submit(self, key: str, limit: Limit | None, actor: str) -> Submitted:
        request_id = uuid.uuid4().hex
        stream = self._keys.config_stream
        with self._tracer.start_as_current_span(
            f"send {stream}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "redis",
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": stream,
                "throttler.request_id": request_id,
            },
        ) as span:
            common = {
                "key": key,
                "actor": actor,
                "request_id": request_id,
                "submitted_at_ms": now_ms(),
                "traceparent": current_traceparent(),
            }
            event = DeleteLimit(**common) if limit is None else SetLimit(**common, limit=limit)  # type: ignore[arg-type]
            future = self._hub.expect(request_id)
            try:
                event_id = await publish(self._gateway, self._keys, event, self._maxlen)
                span.set_attribute("messaging.message.id", event_id)
                outcome = None
                with anyio.move_on_after(self._wait_s):
                    outcome = await future
                return Submitted(event_id, outcome)
            finally:
                future.cancel()
