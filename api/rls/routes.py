"""``GET /rls/domains`` and ``GET /rls/domains/{domain}``: the Envoy RLS domains this
process answers with (loaded from Redis, refreshed on every change; docs/envoy.md)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Request, get
from litestar.params import PathParameter

from api.auth import admin_guard
from api.openapi import ADMIN
from api.routes import error_specs
from core.errors import LimitValidationError, NotFoundError
from schemas.rls import RlsDomain

if TYPE_CHECKING:
    from api.services import Services

__all__ = ["RLS_ROUTES", "RlsDomainList"]

_DOMAIN_PATTERN = r"^[^\s\x00-\x1f\x7f/]{1,256}$"
_DOMAIN = re.compile(_DOMAIN_PATTERN)

Domain = Annotated[
    str,
    PathParameter(
        description="The domain Envoy names in its requests.",
        schema_extra={"pattern": _DOMAIN_PATTERN, "minLength": 1, "maxLength": 256},
    ),
]


class RlsDomainList(msgspec.Struct):
    """Every loaded domain, and the version of the domains this process has loaded (it
    grows by one with every applied change; -1: not loaded yet)."""

    version: int
    items: list[RlsDomain]


def _services(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


@get(
    "/rls/domains",
    tags=["envoy"],
    guards=[admin_guard],
    summary="Envoy RLS domains",
    security=ADMIN,
    operation_id="list_rls_domains",
    responses=error_specs(401),
)
async def list_rls_domains(request: Request[Any, Any, Any]) -> RlsDomainList:
    """Every domain of Envoy's rate limit service as this process has loaded it (changes
    arrive within about a second: `throttler apply` publishes them)."""
    sync = _services(request).domains
    domains = sync.domains
    return RlsDomainList(version=sync.version, items=[domains[n] for n in sorted(domains)])


@get(
    "/rls/domains/{domain:str}",
    tags=["envoy"],
    guards=[admin_guard],
    summary="One Envoy RLS domain",
    security=ADMIN,
    operation_id="get_rls_domain",
    responses=error_specs(400, 401, 404),
)
async def get_rls_domain(request: Request[Any, Any, Any], domain: Domain) -> RlsDomain:
    """A domain's descriptor tree, in envoyproxy/ratelimit's format (with our extensions)."""
    if not _DOMAIN.fullmatch(domain):
        raise LimitValidationError(
            "domain: 1-256 characters without whitespace, control characters or /",
            field="domain",
        )
    found = _services(request).domains.domains.get(domain)
    if found is None:
        raise NotFoundError(f"no RLS domain {domain!r}")
    return found


RLS_ROUTES = [list_rls_domains, get_rls_domain]
