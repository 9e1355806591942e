"""HTTP routes: a key's limits (set, read, list, delete, reset) and checks."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

from litestar import Request, Response, delete, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, JSONBody, Parameter, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api.allow import options_route
from api.auth import admin_guard, check_guard
from api.bodies import blank_body_is_no_body
from api.openapi import ADMIN, CHECK, KEY_SCHEMA
from api.strict import OptionalBodyOperation, require_strict
from core.errors import LimitValidationError, NotFoundError
from core.keys import validate_key
from schemas.events import LimitChanged
from schemas.http import (
    AcceptedResponse,
    CheckAllowed,
    CheckDenied,
    CheckRequest,
    ErrorResponse,
    KeyLimitsItem,
    KeyList,
    LimitBody,
    LimitStatus,
    LimitUsage,
    ResetResponse,
)
from schemas.limits import KeyLimits, Limit

if TYPE_CHECKING:
    from api.services import Services
    from core.limiter import CheckResult

__all__ = ["ACCEPTED_SPEC", "ROUTES", "accepted", "actor_of", "error_specs"]

Key = Annotated[
    str,
    PathParameter(
        description="The rate-limit key: at most 256 bytes of UTF-8 without whitespace, "
        "control characters, / { } or *",
        schema_extra=KEY_SCHEMA,
    ),
]
CURSOR_PATTERN = r"^([0-9]{1,4}:[0-9]{1,20})?$"
_CURSOR = re.compile(CURSOR_PATTERN)


def _services(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


def error_specs(*statuses: int) -> dict[int, ResponseSpec]:
    descriptions = {
        400: "Invalid key, malformed JSON or a value out of range (`invalid_key`, "
        "`validation_error`).",
        401: "Missing or wrong bearer token (`unauthorized`).",
        404: "The key has no limit of its own (`not_found`).",
        413: "Request body too large (`payload_too_large`).",
        503: "Redis is unavailable (`redis_unavailable`).",
    }
    return {
        s: ResponseSpec(data_container=ErrorResponse, description=descriptions[s]) for s in statuses
    }


def actor_of(request: Request[Any, Any, Any]) -> str:
    client = request.client
    return f"http:{client.host}" if client else "http"


def accepted(event_id: str) -> Response[AcceptedResponse | Any]:
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
    usage = result.usage or [(result.remaining, result.reset_after_ms)] * len(result.limits)
    limits = [
        LimitUsage(
            requests=limit.requests,
            window_ms=limit.window_ms,
            algorithm=limit.algorithm,
            burst=limit.burst if limit.algorithm in ("token_bucket", "gcra") else None,
            limit=limit.capacity,
            remaining=remaining,
            reset_after_ms=reset,
            calendar=limit.calendar,
        )
        for limit, (remaining, reset) in zip(result.limits, usage, strict=True)
    ]
    top = min(limits, key=lambda u: u.remaining)  # the limit a check would hit first
    return LimitStatus(
        key=key,
        requests=top.requests,
        window_ms=top.window_ms,
        algorithm=top.algorithm,
        burst=top.burst,
        limit=top.limit,
        remaining=top.remaining,
        reset_after_ms=top.reset_after_ms,
        source=result.source,
        policy=result.policy,
        shadow=result.shadow,
        limits=limits,
    )


def _answer_body(outcome: LimitChanged) -> Limit | KeyLimits | None:
    """The key's limits as an answer shows them: one limit as itself, several as a list."""
    if outcome.limits is not None:
        return KeyLimits(outcome.limits, outcome.shadow)
    return outcome.limit


ACCEPTED_SPEC = ResponseSpec(
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
    summary="Create or replace a key's limits",
    security=ADMIN,
    middleware=[blank_body_is_no_body],
    operation_id="set_limit",
    status_code=HTTP_201_CREATED,
    responses={
        201: ResponseSpec(
            data_container=LimitBody,
            generate_examples=False,
            description="Created: the limits as stored (one limit's fields, or limits and shadow).",
        ),
        200: ResponseSpec(
            data_container=LimitBody,
            generate_examples=False,
            description="Replaced the key's limits.",
        ),
        202: ACCEPTED_SPEC,
        409: _CONFLICT,
        **error_specs(400, 401, 413, 503),
    },
)
async def put_limit(
    request: Request[Any, Any, Any], key: Key, data: JSONBody[LimitBody]
) -> Response[Limit | KeyLimits | AcceptedResponse | ErrorResponse]:
    """201 with the stored limits when created, 200 when they replaced others.

    The body is one limit (`requests`, `window_ms`, `algorithm`, `burst`), answered as that
    limit, or several: `{"limits": [...], "shadow": false}` (1 to 8 limits: a check must
    satisfy all), answered in that form. The change is published on the config stream and
    applied by a worker; the answer waits for that (up to `APPLY_WAIT_MS`), then reports the
    applied limits. If no worker applied it in time: 202 with the event id, and the change
    applies whenever a worker comes. A limit kept under the same algorithm at the same
    position keeps what the caller has spent; a new algorithm starts from a full limit.
    """
    validate_key(key)
    await require_strict(request, LimitBody)
    wanted = data.resolve()
    mutations, actor = _services(request).mutations, actor_of(request)
    if isinstance(wanted, Limit):
        submitted = await mutations.set(key, wanted, actor)
    else:
        submitted = await mutations.set_many(key, wanted.limits, wanted.shadow, actor)
    outcome = submitted.outcome
    if not isinstance(outcome, LimitChanged):
        return accepted(submitted.event_id)
    if outcome.result == "stale":
        return _conflict(submitted.event_id)
    status = HTTP_201_CREATED if outcome.result == "created" else HTTP_200_OK
    return Response(_answer_body(outcome) or wanted, status_code=status)


@get(
    "/rate-limit/{key:str}",
    tags=["limits"],
    guards=[admin_guard],
    summary="The limits a key is checked under, and its live usage",
    security=ADMIN,
    operation_id="get_limit",
    responses=error_specs(400, 401, 503),
)
async def get_limit(request: Request[Any, Any, Any], key: Key) -> LimitStatus:
    """For any valid key: its effective limits (`source`: its own `key` limits, a `policy`,
    or the built-in `default`), and what is left of each now. Spends and creates nothing."""
    validate_key(key)
    result = await _services(request).limiter.status(key)
    return _status_body(key, result)


@get(
    "/rate-limit",
    tags=["limits"],
    guards=[admin_guard],
    summary="Keys with limits of their own",
    security=ADMIN,
    operation_id="list_limits",
    responses=error_specs(400, 401, 503),
)
async def list_limits(
    request: Request[Any, Any, Any],
    prefix: FromQuery[Annotated[str, Parameter(max_length=256)]] = "",
    count: FromQuery[Annotated[int, Parameter(ge=1, le=1000)]] = 100,
    cursor: FromQuery[Annotated[str, Parameter(max_length=64, pattern=CURSOR_PATTERN)]] = "",
) -> KeyList:
    """Keys starting with `prefix` that have limits of their own (set with `POST` or
    inline), about `count` per page; pass `next_cursor` back as `cursor` for the next page
    (`null`: the last). Scans every Redis node."""
    if not _CURSOR.fullmatch(cursor):
        raise LimitValidationError("cursor: not a cursor this service gave", field="cursor")
    store = _services(request).config
    found, following = await store.list_keys(prefix, count, cursor)
    items = [
        KeyLimitsItem(key=key, limits=list(c.limits), shadow=c.shadow, inline=c.inline)
        for key, c in found
    ]
    return KeyList(items=items, next_cursor=following or None)


@delete(
    "/rate-limit/{key:str}",
    tags=["limits"],
    guards=[admin_guard],
    summary="Remove a key's limits and state",
    security=ADMIN,
    operation_id="delete_limit",
    status_code=HTTP_200_OK,
    responses={
        200: ResponseSpec(
            data_container=LimitBody,
            generate_examples=False,
            description="Removed: the limits it had.",
        ),
        202: ACCEPTED_SPEC,
        409: _CONFLICT,
        **error_specs(400, 401, 404, 503),
    },
)
async def delete_limit(
    request: Request[Any, Any, Any], key: Key
) -> Response[Limit | KeyLimits | AcceptedResponse | ErrorResponse]:
    """200 with the removed limits, 404 when the key had none (202 as for POST)."""
    validate_key(key)
    submitted = await _services(request).mutations.delete(key, actor_of(request))
    outcome = submitted.outcome
    if not isinstance(outcome, LimitChanged):
        return accepted(submitted.event_id)
    if outcome.result == "stale":
        return _conflict(submitted.event_id)
    if outcome.result == "not_found":
        raise NotFoundError("no limit is set for this key")
    if outcome.before_limits is not None:
        return Response(KeyLimits(outcome.before_limits, outcome.before_shadow))
    if outcome.before is None:
        raise NotFoundError("no limit is set for this key")
    return Response(outcome.before)


@post(
    "/rate-limit/{key:str}/reset",
    tags=["limits"],
    guards=[admin_guard],
    summary="Clear what a key has spent",
    security=ADMIN,
    operation_id="reset_key",
    status_code=HTTP_200_OK,
    responses={
        200: ResponseSpec(data_container=ResetResponse, description="Reset."),
        202: ACCEPTED_SPEC,
        **error_specs(400, 401, 503),
    },
)
async def reset_key(
    request: Request[Any, Any, Any], key: Key
) -> Response[ResetResponse | AcceptedResponse]:
    """Every limit of the key is full again; the limits themselves stay. Travels on the
    config stream like a change (audited: who, when, trace); 202 as for POST."""
    validate_key(key)
    submitted = await _services(request).mutations.reset(key, actor_of(request))
    if submitted.outcome is None:
        return accepted(submitted.event_id)
    return Response(ResetResponse(key=key, reset=True))


@post(
    "/rate-limit/{key:str}/check",
    tags=["checks"],
    guards=[check_guard],
    operation_class=OptionalBodyOperation,
    summary="Check and spend tokens",
    security=CHECK,
    operation_id="check",
    status_code=HTTP_200_OK,
    responses={
        200: ResponseSpec(data_container=CheckAllowed, description="Allowed (tokens spent)."),
        429: ResponseSpec(data_container=CheckDenied, description="Rate limit exceeded."),
        **error_specs(400, 401, 413, 503),
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
    list_limits,
    delete_limit,
    reset_key,
    check,
]
