"""Limit-change notifications: one Pub/Sub subscription per process, fanned out.

The hub resolves the waits of this process's own config changes (read-your-writes) and
feeds every listener (SSE and WebSocket clients), each through a small bounded buffer: a
listener too slow to keep up loses notifications rather than slowing anybody else.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

import anyio
import msgspec

from core.gateway import is_unavailable
from core.outage import Outage
from schemas.events import (
    LimitChanged,
    Notification,
    PolicyChanged,
    RlsDomainChanged,
    notification_decoder,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from core.gateway import Gateway

__all__ = ["NotificationHub"]

_log = logging.getLogger("throttler.notifications")


class NotificationHub:
    def __init__(self, gateway: Gateway, channel: str, buffer: int = 256) -> None:
        self._gateway = gateway
        self.channel = channel
        self._buffer = buffer
        self._waiters: dict[str, asyncio.Future[Notification]] = {}
        self._listeners: dict[MemoryObjectSendStream[Notification], str] = {}
        self._ended = False
        self._on_policy: list[Callable[[], None]] = []
        self._on_domain: list[Callable[[], None]] = []
        self.subscribed = anyio.Event()
        self.outage = Outage(_log, "notifications")

    def on_policy_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a policy changed (the in-process policy table)."""
        self._on_policy.append(callback)

    def on_domain_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever an Envoy RLS domain changed (the in-process table)."""
        self._on_domain.append(callback)

    def expect(self, request_id: str) -> asyncio.Future[Notification]:
        """A future resolved by the notification carrying ``request_id``."""
        future: asyncio.Future[Notification] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = future
        future.add_done_callback(lambda _: self._waiters.pop(request_id, None))
        return future

    @asynccontextmanager
    async def listen(
        self, prefix: str = ""
    ) -> AsyncIterator[MemoryObjectReceiveStream[Notification]]:
        """Notifications for keys starting with ``prefix`` (and of policy changes, when
        ``prefix`` is empty), while the context is open.

        The stream ends (``EndOfStream``) after :meth:`end_listeners`.
        """
        send, receive = anyio.create_memory_object_stream[Notification](self._buffer)
        if self._ended:
            send.close()
        else:
            self._listeners[send] = prefix
        try:
            yield receive
        finally:
            self._listeners.pop(send, None)
            send.close()
            receive.close()

    def end_listeners(self) -> None:
        """End every listener's stream, now and from now on (the process is stopping).

        What is buffered is still delivered; the waits of config changes are unaffected.
        """
        self._ended = True
        for send in list(self._listeners):
            send.close()
        self._listeners.clear()

    def dispatch(self, note: Notification) -> None:
        future = self._waiters.get(note.request_id) if note.request_id else None
        if future is not None and not future.done():
            future.set_result(note)
        if isinstance(note, PolicyChanged):
            for callback in self._on_policy:
                callback()
        if isinstance(note, RlsDomainChanged):
            for callback in self._on_domain:
                callback()
        # policies and domains: to listeners of every key
        subject = note.key if isinstance(note, LimitChanged) else ""
        for send, prefix in list(self._listeners.items()):
            if subject.startswith(prefix):
                with suppress(
                    anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError
                ):
                    send.send_nowait(note)

    async def run(self) -> None:
        """Subscribe and dispatch until cancelled; resubscribe after a lost connection.

        Any other failure is logged and retried too: a hub that died would leave every
        config change of this process waiting for a notification that never comes. An
        outage is logged when it starts and when it ends; retries back off meanwhile.
        """
        while True:
            try:
                await self._run_once()
                delay = 0.0
            except Exception as exc:
                if is_unavailable(exc):
                    delay = self.outage.failed(exc)
                else:
                    _log.exception("notification subscription failed; retrying")
                    delay = 0.5
            self.subscribed = anyio.Event()
            await anyio.sleep(delay)

    async def _run_once(self) -> None:
        # A cluster client learns its slots on its first command; its Pub/Sub does not ask,
        # and fails with a KeyError on the slot of the channel until something has.
        await self._gateway.prepare(strict=True)
        pubsub = self._gateway.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            self.outage.recovered()
            self.subscribed.set()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    self.dispatch(notification_decoder.decode(message["data"]))
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    _log.warning("ignored a malformed notification: %s", exc)
        finally:
            with anyio.CancelScope(shield=True), suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
