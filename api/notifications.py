"""Limit-change notifications for clients: Server-Sent Events and a WebSocket."""

from __future__ import annotations

import time
import weakref
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from litestar import Request, Response, WebSocket, get, post, websocket
from litestar.enums import MediaType
from litestar.exceptions import WebSocketDisconnect, WebSocketException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery
from litestar.response import ServerSentEvent, ServerSentEventMessage

from api.auth import WS_THROTTLED, admin_guard, notification_guard
from api.drain import SHUTTING_DOWN
from api.openapi import ADMIN, NOTIFY
from api.throttle import Throttled, client_address
from api.tickets import TICKET_TTL_MS, issue_ticket
from schemas.http import ErrorResponse, TicketResponse

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from api.services import Services

__all__ = ["NOTIFICATION_ROUTES"]

_encoder = msgspec.json.Encoder()
#: A comment line and nothing else: a browser's EventSource fires no event for it (a `data:`
#: line, even empty, would be a message whose data is not JSON).
_KEEPALIVE = ServerSentEventMessage(data=None, comment="keep-alive")

Prefix = FromQuery[str]


@post(
    "/notifications/ticket",
    tags=["notifications"],
    guards=[admin_guard],
    security=ADMIN,
    status_code=200,
    operation_id="notification_ticket",
    summary="A short-lived ticket for the notification routes",
    responses={
        401: ResponseSpec(ErrorResponse, description="Missing or wrong token."),
    },
)
async def notification_ticket(request: Request[Any, Any, Any]) -> TicketResponse:
    """For web pages: `EventSource` and `WebSocket` cannot send `Authorization`, and the admin
    token must not go into a URL. A backend holding the admin token asks for a ticket; the
    page opens `/notifications?ticket=<ticket>` (or `/notifications/ws?ticket=`) within
    `expires_in_ms`. A ticket opens the notification routes only."""
    services: Services = request.app.state.services
    now = time.time_ns() // 1_000_000
    ticket = issue_ticket(services.settings.admin_token or "", now)
    return TicketResponse(ticket=ticket, expires_in_ms=TICKET_TTL_MS)


@get(
    "/notifications",
    tags=["notifications"],
    guards=[notification_guard],
    security=NOTIFY,
    responses={
        400: ResponseSpec(ErrorResponse, description="Invalid query (`validation_error`)."),
        401: ResponseSpec(ErrorResponse, description="Missing or wrong token or ticket."),
        503: ResponseSpec(ErrorResponse, description="The server is shutting down."),
    },
    operation_id="notifications",
    summary="Limit changes as Server-Sent Events",
    media_type="text/event-stream",
)
async def notifications_sse(
    request: Request[Any, Any, Any], prefix: Prefix = ""
) -> ServerSentEvent | Response[ErrorResponse]:
    """One `limit_changed` event per applied change to a key starting with `prefix`.

    Try `curl -N http://localhost:8080/notifications?prefix=free:`. A comment line is sent
    every `SSE_KEEPALIVE_MS` (15 s) to keep proxies from closing an idle stream. The stream
    ends when the server begins to shut down (reconnect: another instance serves it); while
    it drains, new streams are refused with 503 `shutting_down`.
    """
    services: Services = request.app.state.services
    if services.drain.draining:
        # The media type is explicit: the route's own (text/event-stream) would apply.
        return Response(SHUTTING_DOWN, status_code=503, media_type=MediaType.JSON)
    keepalive_s = services.settings.sse_keepalive_ms / 1000
    give_back = services.listeners.take(client_address(request.scope))

    async def events() -> AsyncGenerator[ServerSentEventMessage, None]:
        try:
            async with services.hub.listen(prefix) as notes:
                yield ServerSentEventMessage(
                    event="subscribed", data=_encoder.encode({"prefix": prefix}).decode()
                )
                while True:
                    note = None
                    with anyio.move_on_after(keepalive_s):
                        try:
                            note = await notes.receive()
                        except anyio.EndOfStream:  # the server is stopping
                            return
                    if note is None:
                        yield _KEEPALIVE
                        continue
                    yield ServerSentEventMessage(
                        data=_encoder.encode(note).decode(),
                        event=str(type(note).__struct_config__.tag),  # limit/policy_changed
                        id=note.event_id,
                    )
        finally:
            give_back()

    stream = events()
    weakref.finalize(stream, give_back)  # also when the stream never starts (client gone)
    return ServerSentEvent(stream)


@websocket("/notifications/ws", guards=[notification_guard])
async def notifications_ws(socket: WebSocket[Any, Any, Any], prefix: Prefix = "") -> None:
    """The same notifications as JSON text messages on a WebSocket.

    When the server begins to shut down, the socket is closed with code 1001 (going away).
    """
    services: Services = socket.app.state.services
    try:
        give_back = services.listeners.take(client_address(socket.scope))
    except Throttled as exc:
        raise WebSocketException(detail=str(exc.detail), code=WS_THROTTLED) from None
    try:
        await _serve_ws(socket, services, prefix)
    finally:
        give_back()


async def _serve_ws(socket: WebSocket[Any, Any, Any], services: Services, prefix: str) -> None:
    await socket.accept()
    server_ended = False
    async with services.hub.listen(prefix) as notes, anyio.create_task_group() as tg:

        async def until_closed() -> None:
            # Reading is how a WebSocket learns that the client went away.
            with suppress(WebSocketDisconnect):
                while True:
                    await socket.receive_data(mode="text")
            tg.cancel_scope.cancel()

        tg.start_soon(until_closed)
        with suppress(WebSocketDisconnect):
            if not services.drain.draining:
                # Say when listening has begun: changes from then on are delivered.
                subscribed = {"type": "subscribed", "prefix": prefix}
                await socket.send_text(_encoder.encode(subscribed).decode())
                async for note in notes:  # ends when the server begins to stop
                    await socket.send_text(_encoder.encode(note).decode())
            server_ended = True
        tg.cancel_scope.cancel()
    if server_ended:
        await socket.close(code=1001, reason="server shutting down")


NOTIFICATION_ROUTES = [notification_ticket, notifications_sse, notifications_ws]
