"""``POST /check``: many checks in one request and one Redis round trip."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody

from api.auth import check_guard
from api.openapi import CHECK
from schemas.http import BatchRequest, BatchResponse, ErrorResponse

__all__ = ["BATCH_ROUTES"]


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
    raise RuntimeError("checks are answered by api.checks.LeanChecks")


BATCH_ROUTES = [batch_check]
