"""Policy routes: limits for every key a pattern matches (``free:*``), set, read, listed,
deleted. Changes travel on the config stream like a key's limits (audited, announced)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

from litestar import Request, Response, delete, get, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api.allow import options_route
from api.auth import admin_guard
from api.bodies import blank_body_is_no_body
from api.openapi import ADMIN
from api.routes import ACCEPTED_SPEC, accepted, actor_of, error_specs
from api.strict import require_strict
from core.errors import LimitValidationError, NotFoundError
from core.gateway import text
from core.keys import validate_key
from core.policies import decode_policy
from core.scripts import READ_POLICIES
from schemas.events import PolicyChanged
from schemas.http import ErrorResponse, PolicyList, PolicyView
from schemas.limits import POLICY_NAME_PATTERN, Policy

if TYPE_CHECKING:
    from api.services import Services

__all__ = ["POLICY_ROUTES"]

Name = Annotated[
    str,
    PathParameter(
        description="The policy's name: 1-64 characters of A-Z a-z 0-9 _ - . :",
        schema_extra={"pattern": POLICY_NAME_PATTERN, "minLength": 1, "maxLength": 64},
    ),
]
_NAME = re.compile(POLICY_NAME_PATTERN)
_CONFLICT = ResponseSpec(
    data_container=ErrorResponse,
    description="A pattern of the policy belongs to another policy, or a newer change to "
    "the policy was applied first (`conflict`).",
)


def _services(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


def _validate(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise LimitValidationError(
            f"name: a policy name is 1-64 characters of A-Z a-z 0-9 _ - . : (got {name[:80]!r})",
            field="name",
        )


def _view(name: str, policy: Policy) -> PolicyView:
    return PolicyView(name=name, limits=policy.limits, match=policy.match, shadow=policy.shadow)


def _conflict(message: str) -> Response[ErrorResponse | Any]:
    return Response(ErrorResponse("conflict", message), status_code=409)


def _patterns_ok(policy: Policy) -> None:
    for pattern in policy.match:
        if pattern != "*":
            validate_key(pattern.removesuffix("*") or "x")


async def _all(request: Request[Any, Any, Any]) -> dict[str, Policy]:
    services = _services(request)
    keys = [services.keys.policies, services.keys.policy_version]
    reply: list[Any] = await services.gateway.run(READ_POLICIES, keys, [])
    flat = reply[1:]
    return {text(n): decode_policy(raw) for n, raw in zip(flat[::2], flat[1::2], strict=True)}


@put(
    "/policies/{name:str}",
    tags=["policies"],
    guards=[admin_guard],
    summary="Create or replace a policy",
    security=ADMIN,
    middleware=[blank_body_is_no_body],
    operation_id="set_policy",
    status_code=HTTP_201_CREATED,
    responses={
        201: ResponseSpec(data_container=PolicyView, description="Created."),
        200: ResponseSpec(data_container=PolicyView, description="Replaced the policy."),
        202: ACCEPTED_SPEC,
        409: _CONFLICT,
        **error_specs(400, 401, 413, 503),
    },
)
async def put_policy(
    request: Request[Any, Any, Any], name: Name, data: JSONBody[Policy]
) -> Response[PolicyView | Any]:
    """`limits` (1 to 8) for every key that a pattern of `match` selects and that has no
    limits of its own: an exact key, a prefix ending in `*`, or `*` alone (every other key:
    replaces the built-in default). A key takes its own limits, else an exact match, else the
    longest matching prefix, else `*`, else the built-in default. One pattern belongs to one
    policy: a pattern another policy holds is a `409 conflict`. With `shadow`, checks are
    decided and spent as usual but always allowed (a would-be denial is reported)."""
    _validate(name)
    await require_strict(request, Policy)
    _patterns_ok(data)
    services = _services(request)
    taken = {p: n for n, pol in services.policies.table.policies.items() for p in pol.match}
    for pattern in data.match:
        if taken.get(pattern, name) != name:
            return _conflict(f"pattern {pattern!r} belongs to policy {taken[pattern]!r}")
    submitted = await services.mutations.set_policy(name, data, actor_of(request))
    outcome = submitted.outcome
    if not isinstance(outcome, PolicyChanged):
        return accepted(submitted.event_id)
    if outcome.result == "conflict":
        return _conflict(f"a pattern of policy {name!r} belongs to another policy")
    if outcome.result == "stale":
        return _conflict(f"change {submitted.event_id} was not applied: a newer change won")
    await services.policies.load()  # read-your-writes: this process checks under it now
    status = HTTP_201_CREATED if outcome.result == "created" else HTTP_200_OK
    return Response(_view(name, outcome.policy or data), status_code=status)


@get(
    "/policies/{name:str}",
    tags=["policies"],
    guards=[admin_guard],
    summary="A policy",
    security=ADMIN,
    operation_id="get_policy",
    responses=error_specs(400, 401, 404, 503),
)
async def get_policy(request: Request[Any, Any, Any], name: Name) -> PolicyView:
    _validate(name)
    policy = (await _all(request)).get(name)
    if policy is None:
        raise NotFoundError(f"no policy {name!r}")
    return _view(name, policy)


@get(
    "/policies",
    tags=["policies"],
    guards=[admin_guard],
    summary="Every policy",
    security=ADMIN,
    operation_id="list_policies",
    responses=error_specs(401, 503),
)
async def list_policies(request: Request[Any, Any, Any]) -> PolicyList:
    """Every policy, by name."""
    policies = await _all(request)
    return PolicyList(items=[_view(n, policies[n]) for n in sorted(policies)])


@delete(
    "/policies/{name:str}",
    tags=["policies"],
    guards=[admin_guard],
    summary="Remove a policy",
    security=ADMIN,
    operation_id="delete_policy",
    status_code=HTTP_200_OK,
    responses={
        200: ResponseSpec(data_container=PolicyView, description="Removed: the policy it was."),
        202: ACCEPTED_SPEC,
        409: _CONFLICT,
        **error_specs(400, 401, 404, 503),
    },
)
async def delete_policy(request: Request[Any, Any, Any], name: Name) -> Response[PolicyView | Any]:
    """200 with the removed policy; its keys fall back to their next match. 404 when there
    was none (202 as for PUT)."""
    _validate(name)
    submitted = await _services(request).mutations.delete_policy(name, actor_of(request))
    outcome = submitted.outcome
    if not isinstance(outcome, PolicyChanged):
        return accepted(submitted.event_id)
    if outcome.result == "stale":
        return _conflict(f"change {submitted.event_id} was not applied: a newer change won")
    if outcome.before is None:
        raise NotFoundError(f"no policy {name!r}")
    await _services(request).policies.load()
    return Response(_view(name, outcome.before))


POLICY_ROUTES = [
    options_route("/policies/{name:str}", "GET", "PUT", "DELETE"),  # first: see api.allow
    put_policy,
    get_policy,
    list_policies,
    delete_policy,
]
