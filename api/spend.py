"""Spend primitives beside the check: ``POST /rate-limit/{key}/acquire``, ``/release`` and
``/refund``, answered by :class:`Spend` inside the lean ASGI layer (:mod:`api.checks`), like
a check: ``CHECK_TOKEN``, one strict decode, one script call, the failure policy (acquire
only: a release or refund that Redis cannot take is a 503), JSON errors. The routes are
declared in Litestar below for the OpenAPI document only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from api.auth import check_guard
from api.headers import rate_limit_headers
from api.lean import AnswerError, bad, decode_body
from api.lean import denied as _denied
from api.openapi import CHECK
from api.routes import Key
from api.strict import OptionalBodyOperation
from core.errors import NoConcurrencyLimitError, RedisUnavailableError
from schemas.http import (
    AcquireAllowed,
    AcquireRequest,
    CheckDenied,
    ErrorResponse,
    RefundRequest,
    RefundResponse,
    ReleaseRequest,
    ReleaseResponse,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from api.headers import Header
    from api.services import Services

__all__ = ["ACQUIRE", "REFUND", "RELEASE", "SPEND_ROUTES", "Spend"]

ACQUIRE = "/rate-limit/{key}/acquire"
RELEASE = "/rate-limit/{key}/release"
REFUND = "/rate-limit/{key}/refund"

_encode = msgspec.json.Encoder().encode
_acquire_body = msgspec.json.Decoder(AcquireRequest | None, strict=True)
_release_body = msgspec.json.Decoder(ReleaseRequest, strict=True)
_refund_body = msgspec.json.Decoder(RefundRequest, strict=True)
_EMPTY = AcquireRequest()

Answer = tuple[int, bytes, list["Header"]]


def _unavailable(exc: RedisUnavailableError) -> AnswerError:
    return AnswerError(
        503,
        "redis_unavailable",
        "the rate-limit store (Redis) is unavailable; retry shortly",
        [(b"retry-after", b"1")],
    )


class Spend:
    """The three handlers. ``degraded`` applies FAILURE_POLICY (as for a check);
    ``decision`` counts a decision in ``throttler_checks_total``."""

    def __init__(
        self,
        degraded: Callable[[RedisUnavailableError, int, bytes], Answer],
        decision: Callable[[str, str], Any],
    ) -> None:
        self._degraded = degraded
        self._decision = decision

    async def answer(self, route: str, services: Services, key: str, body: bytes) -> Answer:
        if route == ACQUIRE:
            return await self._acquire(services, key, body)
        if not body.strip():
            raise bad("a JSON body is required")
        if route == RELEASE:
            return await self._release(services, key, body)
        return await self._refund(services, key, body)

    async def _acquire(self, services: Services, key: str, body: bytes) -> Answer:
        request = (decode_body(_acquire_body, body) or _EMPTY) if body.strip() else _EMPTY
        try:
            lease = await services.limiter.acquire(key, request.ttl_ms or 0)
        except NoConcurrencyLimitError as exc:
            raise AnswerError(409, "no_concurrency_limit", str(exc)) from None
        except RedisUnavailableError as exc:
            open_body = _encode(AcquireAllowed(True, "", 0, 0, 0, enforced=False))
            return self._degraded(exc, 1, open_body)
        result = lease.result
        headers = rate_limit_headers(result)
        if lease.id:
            self._decision("concurrency", "allowed").inc()
            allowed = AcquireAllowed(
                True,
                lease.id,
                lease.expires_in_ms,
                result.remaining,
                result.limit,
                policy=result.policy,
            )
            return 200, _encode(allowed), headers
        self._decision(result.algorithm, "denied").inc()
        denied = _denied(result, "no lease free")
        return 429, _encode(denied), headers

    async def _release(self, services: Services, key: str, body: bytes) -> Answer:
        request: ReleaseRequest = decode_body(_release_body, body)
        try:
            released = await services.limiter.release(key, request.lease)
        except RedisUnavailableError as exc:
            raise _unavailable(exc) from None
        if not released:
            raise AnswerError(
                404, "not_found", "no such lease: unknown, already released, or expired"
            )
        return 200, _encode(ReleaseResponse(key, released=True)), []

    async def _refund(self, services: Services, key: str, body: bytes) -> Answer:
        request: RefundRequest = decode_body(_refund_body, body)
        try:
            result = await services.limiter.refund(key, request.tokens)
        except RedisUnavailableError as exc:
            raise _unavailable(exc) from None
        refunded = RefundResponse(
            result.remaining, result.limit, result.reset_after_ms, policy=result.policy
        )
        return 200, _encode(refunded), rate_limit_headers(result)


# -- the routes as the OpenAPI document shows them ------------------------------------


def _errors(*statuses: int) -> dict[int, ResponseSpec]:
    descriptions = {
        400: "Invalid key, malformed JSON or a value out of range (`invalid_key`, "
        "`validation_error`).",
        401: "Missing or wrong bearer token (`unauthorized`).",
        404: "No such lease: unknown, already released, or expired (`not_found`).",
        409: "The key has no concurrency limit (`no_concurrency_limit`).",
        413: "Request body too large (`payload_too_large`).",
        503: "Redis is unavailable (`redis_unavailable`).",
    }
    return {
        s: ResponseSpec(data_container=ErrorResponse, description=descriptions[s]) for s in statuses
    }


_LEAN = RuntimeError("answered by api.spend.Spend inside api.checks.LeanChecks")


@post(
    "/rate-limit/{key:str}/acquire",
    tags=["checks"],
    guards=[check_guard],
    operation_class=OptionalBodyOperation,
    summary="Take a lease of a concurrency limit",
    security=CHECK,
    operation_id="acquire",
    status_code=HTTP_200_OK,
    responses={
        200: ResponseSpec(data_container=AcquireAllowed, description="A lease taken."),
        429: ResponseSpec(
            data_container=CheckDenied,
            description="No lease free (or a rate limit of the key denies).",
        ),
        **_errors(400, 401, 409, 413, 503),
    },
)
async def acquire(
    request: Request[Any, Any, Any], key: Key, data: JSONBody[AcquireRequest | None] = None
) -> Response[AcquireAllowed | CheckDenied]:
    """Take one lease from every concurrency limit of the key and spend one token from
    each of its rate limits, all or nothing. The lease lives `ttl_ms` (at most, and by
    default, the concurrency limit's `window_ms`) unless released first; an expired lease
    frees its slot by itself. Denied: 429 with `retry_after_ms`, the time until the
    earliest lease ends. A key without a concurrency limit: 409."""
    raise _LEAN


@post(
    "/rate-limit/{key:str}/release",
    tags=["checks"],
    guards=[check_guard],
    summary="Give back a lease",
    security=CHECK,
    operation_id="release",
    status_code=HTTP_200_OK,
    responses={
        200: ResponseSpec(data_container=ReleaseResponse, description="Released."),
        **_errors(400, 401, 404, 413, 503),
    },
)
async def release(
    request: Request[Any, Any, Any], key: Key, data: JSONBody[ReleaseRequest]
) -> ReleaseResponse:
    """Frees the lease's slot at once. 404 for a lease this key does not hold (unknown,
    already released, or expired)."""
    raise _LEAN


@post(
    "/rate-limit/{key:str}/refund",
    tags=["checks"],
    guards=[check_guard],
    summary="Give back spent tokens",
    security=CHECK,
    operation_id="refund",
    status_code=HTTP_200_OK,
    responses={
        200: ResponseSpec(data_container=RefundResponse, description="Refunded (what is left)."),
        **_errors(400, 401, 413, 503),
    },
)
async def refund(
    request: Request[Any, Any, Any], key: Key, data: JSONBody[RefundRequest]
) -> RefundResponse:
    """Gives back up to `tokens` to every rate limit of the key, never above a limit's
    capacity (docs/algorithms.md says what that means for each algorithm). Charge the
    real cost after the work: check the most it may cost, refund the rest."""
    raise _LEAN


SPEND_ROUTES = [acquire, release, refund]
