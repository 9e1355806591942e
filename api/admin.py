"""Admin routes: dead letters (config entries no worker could apply)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from litestar import Request, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, Parameter

from api.auth import admin_guard
from api.openapi import ADMIN
from core.dead_letters import Replayed, list_dead_letters, replay_dead_letters
from core.errors import NotFoundError
from schemas.events import DeadLetterEntry
from schemas.http import ErrorResponse

if TYPE_CHECKING:
    from api.services import Services

__all__ = ["ADMIN_ROUTES"]


#: At most 1,000 per answer: with each dead letter bounded (workers.applier), an answer
#: stays a few MB at most.
Count = Annotated[int, Parameter(ge=1, le=1000, description="How many, oldest first.")]


def _services(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


@get(
    "/dead-letters",
    tags=["admin"],
    guards=[admin_guard],
    security=ADMIN,
    operation_id="list_dead_letters",
    summary="List dead letters",
    responses={
        400: ResponseSpec(ErrorResponse, description="Invalid `count` (`validation_error`)."),
        401: ResponseSpec(ErrorResponse, description="Missing or wrong token."),
        503: ResponseSpec(ErrorResponse, description="Redis unavailable."),
    },
)
async def dead_letters(
    request: Request[Any, Any, Any], count: FromQuery[Count] = 100
) -> list[DeadLetterEntry]:
    """Config entries that could not be applied, with the reason, oldest first."""
    services = _services(request)
    return await list_dead_letters(services.gateway, services.keys, count)


@post(
    "/dead-letters/{dead_id:str}/replay",
    tags=["admin"],
    guards=[admin_guard],
    security=ADMIN,
    status_code=200,
    operation_id="replay_dead_letter",
    summary="Replay one dead letter",
    responses={
        400: ResponseSpec(ErrorResponse, description="Invalid request (`validation_error`)."),
        401: ResponseSpec(ErrorResponse, description="Missing or wrong token."),
        404: ResponseSpec(ErrorResponse, description="No such dead letter."),
        503: ResponseSpec(ErrorResponse, description="Redis unavailable."),
    },
)
async def replay(request: Request[Any, Any, Any], dead_id: FromPath[str]) -> Replayed:
    """Publish the entry again as a new config change and remove it from the dead letters."""
    services = _services(request)
    done, _ = await replay_dead_letters(
        services.gateway, services.keys, [dead_id], services.settings.stream_maxlen
    )
    if not done:
        raise NotFoundError(f"no dead letter {dead_id}")
    return done[0]


ADMIN_ROUTES = [dead_letters, replay]
