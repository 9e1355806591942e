"""``POST /check``: many checks in one request and one Redis round trip."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Request, Response, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody

from api.auth import check_guard
from api.openapi import CHECK
from api.strict import require_strict
from core.errors import LimitValidationError, RedisUnavailableError
from schemas.http import BatchRequest, BatchResponse, BatchResult, ErrorResponse

if TYPE_CHECKING:
    from api.services import Services
    from core.limiter import CheckResult

__all__ = ["BATCH_ROUTES"]


def _result(key: str, outcome: CheckResult | LimitValidationError) -> BatchResult:
    if isinstance(outcome, LimitValidationError):
        return BatchResult(key, False, 0, 0, 0, error="validation_error", message=str(outcome))
    return BatchResult(
        key,
        outcome.allowed,
        outcome.remaining,
        outcome.limit,
        outcome.reset_after_ms,
        retry_after_ms=None if outcome.allowed else outcome.retry_after_ms,
    )


@post(
    "/check",
    tags=["checks"],
    guards=[check_guard],
    security=CHECK,
    status_code=200,
    operation_id="check_many",
    summary="Check many keys at once",
    responses={
        400: ResponseSpec(ErrorResponse, description="Invalid body (`validation_error`)."),
        401: ResponseSpec(ErrorResponse, description="Missing or wrong token."),
        413: ResponseSpec(ErrorResponse, description="Request body too large."),
        503: ResponseSpec(ErrorResponse, description="Redis unavailable."),
    },
)
async def batch_check(
    request: Request[Any, Any, Any], data: JSONBody[BatchRequest]
) -> Response[BatchResponse]:
    """Each item gets its own decision (200 whatever they are; `allowed` is true when all
    are). With `all_or_nothing`, tokens are spent from every listed limit only if all
    allow, atomically; on a Redis Cluster the keys must then share one hash slot (400
    otherwise). Items use their key's stored limit, else the default limit."""
    await require_strict(request, BatchRequest)
    services: Services = request.app.state.services
    items = [(item.key, item.tokens) for item in data.checks]
    try:
        if data.all_or_nothing:
            outcomes = await services.limiter.check_all(items)
        else:
            outcomes = await services.limiter.check_many(items)
    except RedisUnavailableError:
        policy = services.settings.failure_policy
        services.metrics.degraded.labels(policy).inc(len(items))
        if policy == "closed":
            raise
        # Fail open, as single checks do: allowed, and marked as not enforced.
        allowed = [BatchResult(key, True, 0, 0, 0) for key, _ in items]
        return Response(BatchResponse(True, allowed), headers={"X-RateLimit-Enforced": "false"})
    checks = services.metrics.checks
    for outcome in outcomes:
        if isinstance(outcome, LimitValidationError):
            checks.labels("unknown", "rejected").inc()
        else:
            checks.labels(outcome.algorithm, "allowed" if outcome.allowed else "denied").inc()
    results = [_result(key, o) for (key, _), o in zip(items, outcomes, strict=True)]
    return Response(BatchResponse(all(r.allowed for r in results), results))


BATCH_ROUTES = [batch_check]
