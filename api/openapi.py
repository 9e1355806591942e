"""The OpenAPI document: what Litestar generates from the routes, made complete enough to
drive a code generator and a schema-based fuzzer.

Litestar derives paths, parameters and bodies from the handlers. This module adds what it
cannot know: the bearer-token security schemes, the response headers (``X-RateLimit-*``,
``RateLimit*``, ``Retry-After``, ``WWW-Authenticate``), ``additionalProperties: false`` on
bodies that reject unknown fields, and the limit rules a JSON Schema can state
(``burst`` only for token_bucket and gcra; at most 100,000 requests for sliding_window and
concurrency; an inline limit needs ``requests`` and ``window_ms`` together).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    Schema,
    SecurityScheme,
)

from api.docs_ui import OfflineSwaggerUI
from core.version import VERSION
from schemas.http import (
    AcquireRequest,
    BatchItem,
    BatchRequest,
    CheckRequest,
    LimitBody,
    RefundRequest,
    ReleaseRequest,
)
from schemas.limits import (
    KEY_PATTERN,
    MAX_LEASES,
    MAX_SLIDING_REQUESTS,
    MAX_WINDOW_MS,
    PATTERN_PATTERN,
    Limit,
    Policy,
)

if TYPE_CHECKING:
    import msgspec
    from litestar.openapi.spec import OpenAPI, SecurityRequirement

__all__ = [
    "ADMIN",
    "CHECK",
    "KEY_SCHEMA",
    "NOTIFY",
    "complete_document",
    "openapi_config",
]

#: Security requirements of the routes (each token is optional in a deployment: unset, the
#: routes it guards are open).
ADMIN: Final[list[SecurityRequirement]] = [{"adminToken": []}]
CHECK: Final[list[SecurityRequirement]] = [{"checkToken": []}]
NOTIFY: Final[list[SecurityRequirement]] = [{"adminToken": []}, {"notificationTicket": []}]

#: The ``key`` path parameter, documented only: the handlers answer a bad key with
#: ``400 invalid_key`` themselves (Litestar's own check would say ``validation_error``).
KEY_SCHEMA: Final[dict[str, Any]] = {"pattern": KEY_PATTERN, "minLength": 1, "maxLength": 256}

_SECURITY_SCHEMES: dict[str, SecurityScheme] = {
    "adminToken": SecurityScheme(
        type="http",
        scheme="bearer",
        description="`ADMIN_TOKEN`: limit changes, dead letters, notifications.",
    ),
    "checkToken": SecurityScheme(
        type="http", scheme="bearer", description="`CHECK_TOKEN`: the check routes."
    ),
    "notificationTicket": SecurityScheme(
        type="apiKey",
        name="ticket",
        security_scheme_in="query",
        description="A short-lived ticket from `POST /notifications/ticket`, for browsers "
        "(EventSource and WebSocket cannot send `Authorization`).",
    ),
}


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Throttler",
        version=VERSION,
        description="Distributed rate limiting on Redis: limits, checks, probes.",
        path="/schema",
        render_plugins=[OfflineSwaggerUI()],  # /schema and /schema/swagger
        components=Components(security_schemes=dict(_SECURITY_SCHEMES)),
    )


def _header(description: str, kind: OpenAPIType, *, required: bool) -> OpenAPIHeader:
    return OpenAPIHeader(schema=Schema(type=kind), description=description, required=required)


def _rate_limit_headers(*, required: bool) -> dict[str, OpenAPIHeader]:
    integer, string = OpenAPIType.INTEGER, OpenAPIType.STRING
    return {
        "X-RateLimit-Limit": _header("The most one check can spend.", integer, required=required),
        "X-RateLimit-Remaining": _header(
            "What a check could spend now.", integer, required=required
        ),
        "X-RateLimit-Reset": _header(
            "Unix time (s) when the key is back to its limit.", integer, required=required
        ),
        "X-RateLimit-Window": _header("The limit's window_ms.", integer, required=required),
        "RateLimit-Policy": _header(
            'IETF draft: "<algorithm>";q=<requests>;w=<window s>.', string, required=required
        ),
        "RateLimit": _header(
            'IETF draft: "<algorithm>";r=<remaining>;t=<seconds>.', string, required=required
        ),
    }


_RETRY_AFTER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
    description="Seconds to wait before retrying.",
    required=True,
)
_ENFORCED = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.STRING, enum=["false"]),
    description="Present (`false`) only when Redis could not decide and FAILURE_POLICY=open "
    "let the request through; no other rate-limit header is sent then.",
)
_WWW_AUTHENTICATE = _header(
    'The bearer challenge: Bearer realm="throttler".', OpenAPIType.STRING, required=True
)

#: Headers of particular answers: (method, path, status) -> headers.
_HEADERS: dict[tuple[str, str, str], dict[str, OpenAPIHeader]] = {
    ("post", "/rate-limit/{key}/check", "200"): {
        **_rate_limit_headers(required=False),  # absent when not enforced (fail open)
        "X-RateLimit-Enforced": _ENFORCED,
    },
    ("post", "/rate-limit/{key}/check", "429"): {
        **_rate_limit_headers(required=True),
        "Retry-After": _RETRY_AFTER,
    },
    ("post", "/check", "200"): {"X-RateLimit-Enforced": _ENFORCED},
    ("post", "/rate-limit/{key}/acquire", "200"): {
        **_rate_limit_headers(required=False),  # absent when not enforced (fail open)
        "X-RateLimit-Enforced": _ENFORCED,
    },
    ("post", "/rate-limit/{key}/acquire", "429"): {
        **_rate_limit_headers(required=True),
        "Retry-After": _RETRY_AFTER,
    },
    ("post", "/rate-limit/{key}/refund", "200"): _rate_limit_headers(required=True),
}

#: Rules a JSON Schema can state beyond each field's own range (the API enforces all).
_WINDOWS = Schema(
    properties={"algorithm": Schema(enum=["sliding_window", "fixed_window", "concurrency"])},
    required=["algorithm"],
)
# The exact log and the leases store one entry each: the same cap.
assert MAX_SLIDING_REQUESTS == MAX_LEASES
_SLIDING = Schema(
    properties={"algorithm": Schema(enum=["sliding_window", "concurrency"])},
    required=["algorithm"],
)
_LIMIT_RULES = [
    Schema(schema_if=_WINDOWS, then=Schema(properties={"burst": Schema(type=OpenAPIType.NULL)})),
    Schema(
        schema_if=_SLIDING,
        then=Schema(properties={"requests": Schema(maximum=MAX_SLIDING_REQUESTS)}),
    ),
    Schema(
        schema_if=Schema(required=["calendar"]),
        then=Schema(
            properties={
                "algorithm": Schema(const="fixed_window"),
                "window_ms": Schema(const=MAX_WINDOW_MS),
            },
            required=["algorithm"],
        ),
    ),
]


def _given(field: str, kind: OpenAPIType, *needed: str) -> Schema:
    """When ``field`` holds a ``kind`` (null is the same as absent), ``needed`` hold integers."""
    integers: dict[str, Reference | Schema] = {n: Schema(type=OpenAPIType.INTEGER) for n in needed}
    return Schema(
        schema_if=Schema(properties={field: Schema(type=kind)}, required=[field]),
        then=Schema(properties=integers, required=list(needed)),
    )


_INTEGER, _STRING = OpenAPIType.INTEGER, OpenAPIType.STRING
#: An inline limit (in a check) needs requests and window_ms together.
_INLINE_RULES = [
    _given("requests", _INTEGER, "window_ms"),
    _given("window_ms", _INTEGER, "requests"),
    _given("algorithm", _STRING, "requests", "window_ms"),
    _given("burst", _INTEGER, "requests", "window_ms"),
]
_SINGLE = ("requests", "window_ms", "algorithm", "burst", "calendar")
#: A key's limits: one limit, or ``limits`` (with ``shadow``), never both.
_BODY_RULES = [
    Schema(
        schema_if=Schema(required=["limits"]),
        then=Schema(schema_not=Schema(any_of=[Schema(required=[f]) for f in _SINGLE])),
        schema_else=Schema(
            required=["requests", "window_ms"], schema_not=Schema(required=["shadow"])
        ),
    ),
]
_RULES: dict[type[msgspec.Struct], list[Schema]] = {
    Limit: _LIMIT_RULES,
    CheckRequest: [*_LIMIT_RULES, *_INLINE_RULES],
    LimitBody: [*_LIMIT_RULES, *_BODY_RULES],
}
#: Request bodies: they reject unknown fields.
_BODIES: tuple[type[msgspec.Struct], ...] = (
    Limit,
    CheckRequest,
    BatchRequest,
    BatchItem,
    LimitBody,
    Policy,
    AcquireRequest,
    ReleaseRequest,
    RefundRequest,
)


def _complete_bodies(schemas: dict[str, Schema]) -> None:
    for struct in _BODIES:
        schema = schemas[struct.__name__]
        if struct.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        if rules := _RULES.get(struct):
            schema.all_of = rules
    match = schemas[Policy.__name__].properties or {}
    if isinstance(listed := match.get("match"), Schema):
        listed.unique_items = True
        # Litestar drops the constraints of a list's items: put the pattern back.
        listed.items = Schema(
            type=OpenAPIType.STRING, pattern=PATTERN_PATTERN, min_length=1, max_length=257
        )


def complete_document(openapi: OpenAPI) -> None:
    """Add to Litestar's document what it cannot derive (see the module docstring)."""
    _complete_bodies(openapi.components.schemas or {})
    for path, item in (openapi.paths or {}).items():
        for method in ("get", "head", "post", "put", "delete"):
            operation = getattr(item, method, None)
            if operation is None or not operation.responses:
                continue
            for status, response in operation.responses.items():
                if not isinstance(response, OpenAPIResponse):
                    continue
                headers = dict(_HEADERS.get((method, path, status), {}))
                if status == "401":
                    headers["WWW-Authenticate"] = _WWW_AUTHENTICATE
                if status == "503" and path != "/ready":  # redis_unavailable
                    headers["Retry-After"] = _RETRY_AFTER
                if headers:
                    response.headers = {**(response.headers or {}), **headers}
