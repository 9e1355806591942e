"""HTTP routes: limits CRUD and checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from litestar import Request, Response, delete, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api.allow import options_route
from api.auth import admin_guard, check_guard
from api.bodies import blank_body_is_no_body
from api.openapi import ADMIN, CHECK, KEY_SCHEMA
from api.strict import OptionalBodyOperation, require_strict
from core.errors import NotFoundError
from core.keys import validate_key
from schemas.http import (
    AcceptedResponse,
    CheckAllowed,
    CheckDenied,
    CheckRequest,
    ErrorResponse,
    LimitStatus,
)
from schemas.limits import Limit

if TYPE_CHECKING:
    from api.services import Services
    from core.limiter import CheckResult

__all__ = ["ROUTES"]

Key = Annotated[
    str,
    PathParameter(
        description="The rate-limit key: 1-256 characters of A-Z a-z 0-9 _ - . :",
        schema_extra=KEY_SCHEMA,
    ),
]


def _services(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


def _errors(*statuses: int) -> dict[int, ResponseSpec]:
    descriptions = {
        400: "Invalid key, malformed JSON or a value out of range (`invalid_key`, "
        "`validation_error`).",
        401: "Missing or wrong bearer token (`unauthorized`).",
        404: "The key has no limit (`not_found`).",
        413: "Request body too large (`payload_too_large`).",
        503: "Redis is unavailable (`redis_unavailable`).",
    }
    return {
        s: ResponseSpec(data_container=ErrorResponse, description=descriptions[s]) for s in statuses
    }


def _actor(request: Request[Any, Any, Any]) -> str:
    client = request.client
    return f"http:{client.host}" if client else "http"


def _accepted(event_id: str) -> Response[AcceptedResponse | Any]:
    return Response(AcceptedResponse(status="accepted", event_id=event_id), status_code=202)


def _conflict(event_id: str) -> Response[ErrorResponse | Any]:
    return Response(
        ErrorResponse(
            "conflict",
            f"change {event_id} was not applied: a newer change to this key was applied first",
        ),
        status_code=409,
    )


def _status_body(key: str, result: CheckResult) -> LimitStatus:
    return LimitStatus(
        key=key,
        requests=result.requests,
        window_ms=result.window_ms,
        algorithm=result.algorithm,
        burst=result.burst or None,
        limit=result.limit,
        remaining=result.remaining,
        reset_after_ms=result.reset_after_ms,
    )


_ACCEPTED = ResponseSpec(
    data_container=AcceptedResponse,
    description="Published, but no worker applied it within APPLY_WAIT_MS; it applies later.",
)
_CONFLICT = ResponseSpec(
    data_container=ErrorResponse,
    description="A newer change to the same key was applied first (`conflict`).",
)


@post(
    "/rate-limit/{key:str}",
    tags=["limits"],
    guards=[admin_guard],
    security=ADMIN,
    middleware=[blank_body_is_no_body],
    operation_id="set_limit",
    summary="Create or replace a key's limit",
    status_code=HTTP_201_CREATED,
    responses={
        201: ResponseSpec(data_container=Limit, description="Created: the limit as stored."),
        200: ResponseSpec(data_container=Limit, description="Replaced an existing limit."),
        202: _ACCEPTED,
        409: _CONFLICT,
        **_errors(400, 401, 413, 503),
    },
)
async def put_limit(
    request: Request[Any, Any, Any], key: Key, data: JSONBody[Limit]
) -> Response[Limit | AcceptedResponse | ErrorResponse]:
    """201 with the stored limit when created, 200 when it replaced one.

    The change is published on the config stream and applied by a worker; the answer waits
    for that (up to `APPLY_WAIT_MS`), then reports the applied limit. If no worker applied
    it in time: 202 with the event id, and the change applies whenever a worker comes.
    Replacing a limit with the same algorithm keeps what the caller has spent; a new
    algorithm starts from a full limit.
    """
    validate_key(key)
    await require_strict(request, Limit)
    submitted = await _services(request).mutations.set(key, data, _actor(request))
    outcome = submitted.outcome
    if outcome is None:
        return _accepted(submitted.event_id)
    if outcome.result == "stale":
        return _conflict(submitted.event_id)
    status = HTTP_201_CREATED if outcome.result == "created" else HTTP_200_OK
    return Response(outcome.limit or data, status_code=status)


@get(
    "/rate-limit/{key:str}",
    tags=["limits"],
    guards=[admin_guard],
    security=ADMIN,
    operation_id="get_limit",
    summary="A key's limit and live state",
    responses=_errors(400, 401, 404, 503),
)
async def get_limit(request: Request[Any, Any, Any], key: Key) -> LimitStatus:
    """The limit with `remaining` and `reset_after_ms` now; consumes nothing."""
    validate_key(key)
    result = await _services(request).limiter.status(key)
    return _status_body(key, result)


@delete(
    "/rate-limit/{key:str}",
    tags=["limits"],
    guards=[admin_guard],
    security=ADMIN,
    operation_id="delete_limit",
    summary="Remove a key's limit and state",
    status_code=HTTP_200_OK,
    responses={
        200: ResponseSpec(data_container=Limit, description="Removed: the limit it had."),
        202: _ACCEPTED,
        409: _CONFLICT,
        **_errors(400, 401, 404, 503),
    },
)
async def delete_limit(
    request: Request[Any, Any, Any], key: Key
) -> Response[Limit | AcceptedResponse | ErrorResponse]:
    """200 with the removed limit, 404 when the key had none (202 as for POST)."""
    validate_key(key)
    submitted = await _services(request).mutations.delete(key, _actor(request))
    outcome = submitted.outcome
    if outcome is None:
        return _accepted(submitted.event_id)
    if outcome.result == "stale":
        return _conflict(submitted.event_id)
    if outcome.before is None:
        raise NotFoundError("no limit is set for this key")
    return Response(outcome.before)


@post(
    "/rate-limit/{key:str}/check",
    tags=["checks"],
    guards=[check_guard],
    security=CHECK,
    operation_class=OptionalBodyOperation,
    operation_id="check",
    summary="Check and spend tokens",
    status_code=HTTP_200_OK,
    responses={
        200: ResponseSpec(data_container=CheckAllowed, description="Allowed (tokens spent)."),
        429: ResponseSpec(data_container=CheckDenied, description="Rate limit exceeded."),
        **_errors(400, 401, 413, 503),
    },
)
async def check(
    request: Request[Any, Any, Any], key: Key, data: JSONBody[CheckRequest | None] = None
) -> Response[CheckAllowed | CheckDenied]:
    """Spend `tokens` (default 1; 0 peeks). The body is optional.

    A key with no limit of its own uses the default limit (`DEFAULT_CAPACITY`,
    `DEFAULT_REFILL_RATE`), or, when `INLINE_LIMITS` allows it, the inline limit of the
    body (stored for next time, for `INLINE_LIMIT_TTL_MS` after its last use).
    """
    raise _ANSWERED_BEFORE_ROUTING


#: The check routes are declared here for the OpenAPI document; requests to them are
#: answered by api.checks.LeanChecks before Litestar routes anything.
_ANSWERED_BEFORE_ROUTING = RuntimeError("checks are answered by api.checks.LeanChecks")

ROUTES = [
    options_route("/rate-limit/{key:str}", "GET", "POST", "DELETE"),
    put_limit,
    get_limit,
    delete_limit,
    check,
]
