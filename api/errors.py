"""Map every error to JSON ``{"error": code, "message": text}`` with the right status.

This is the only place that turns the project's errors into HTTP statuses.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from litestar import Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_405_METHOD_NOT_ALLOWED,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from api.throttle import Throttled
from core.errors import (
    InvalidKeyError,
    LimitValidationError,
    NotFoundError,
    RedisUnavailableError,
    StreamExhaustedError,
)
from core.keys import validate_key
from schemas.http import ErrorResponse

if TYPE_CHECKING:
    from litestar import Request
    from litestar.types import ExceptionHandlersMap

__all__ = ["EXCEPTION_HANDLERS", "error_response"]

_log = logging.getLogger("throttler.api")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response[ErrorResponse]:
    return Response(ErrorResponse(code, message), status_code=status, headers=headers)


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorResponse]:
    problems = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for item in problems:
        if isinstance(item, dict):
            key = item.get("key")
            text = str(item.get("message", ""))
            if key == "data" and text == "'data'":
                # Litestar reports a missing required body as the KeyError of its parameter.
                text = "a JSON body is required"
            parts.append(f"{key}: {text}" if key and key != "data" else text)
    message = "; ".join(parts) or str(exc.detail)
    return error_response(HTTP_400_BAD_REQUEST, "validation_error", message)


#: A key path whose key holds an encoded slash: the server decodes ``%2F`` before routing, so
#: ``/rate-limit/a%2Fb`` reaches the router as ``/rate-limit/a/b`` and matches no route (or
#: the wrong one, with a method it does not have).
_ENCODED_SLASH_KEY = re.compile(rb"/rate-limit/([^/]*%2[fF][^/]*)(?:/check)?/?")


def _key_with_a_slash(request: Request[Any, Any, Any]) -> str | None:
    """The key of a ``/rate-limit/{key}`` request whose key has an encoded slash, if any."""
    raw_path = request.scope.get("raw_path") or b""
    match = _ENCODED_SLASH_KEY.fullmatch(raw_path)
    return unquote(match[1].decode("latin-1")) if match else None


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorResponse]:
    status = exc.status_code
    if isinstance(exc, NotFoundException | MethodNotAllowedException) and (
        key := _key_with_a_slash(request)
    ):
        try:
            validate_key(key)  # raises: a key never holds a slash
        except InvalidKeyError as invalid:
            return error_response(HTTP_400_BAD_REQUEST, "invalid_key", str(invalid))
    if isinstance(exc, NotFoundException):
        return error_response(HTTP_404_NOT_FOUND, "not_found", "no such route")
    if isinstance(exc, MethodNotAllowedException):
        return error_response(
            HTTP_405_METHOD_NOT_ALLOWED, "method_not_allowed", str(exc.detail), exc.headers
        )
    if status == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        return error_response(status, "payload_too_large", "request body is too large")
    if status == HTTP_400_BAD_REQUEST:
        return error_response(status, "validation_error", f"malformed JSON body: {exc.detail}")
    code = _STATUS_CODES.get(status, "error")
    return error_response(status, code, str(exc.detail), exc.headers)


def _throttled(_: Request[Any, Any, Any], exc: Throttled) -> Response[ErrorResponse]:
    return error_response(exc.status_code, exc.code, str(exc.detail), exc.headers)


def _invalid_key(_: Request[Any, Any, Any], exc: InvalidKeyError) -> Response[ErrorResponse]:
    return error_response(HTTP_400_BAD_REQUEST, "invalid_key", str(exc))


def _limit(_: Request[Any, Any, Any], exc: LimitValidationError) -> Response[ErrorResponse]:
    return error_response(HTTP_400_BAD_REQUEST, "validation_error", str(exc))


def _not_found(_: Request[Any, Any, Any], exc: NotFoundError) -> Response[ErrorResponse]:
    return error_response(HTTP_404_NOT_FOUND, "not_found", str(exc))


def _unavailable(_: Request[Any, Any, Any], exc: RedisUnavailableError) -> Response[ErrorResponse]:
    _log.warning("redis unavailable: %s", exc)
    return error_response(
        HTTP_503_SERVICE_UNAVAILABLE,
        "redis_unavailable",
        "the rate-limit store (Redis) is unavailable; retry shortly",
        {"Retry-After": "1"},
    )


def _exhausted(_: Request[Any, Any, Any], exc: StreamExhaustedError) -> Response[ErrorResponse]:
    _log.error("the config stream takes no new entries: %s (see docs/operations.md)", exc)
    return error_response(
        HTTP_503_SERVICE_UNAVAILABLE,
        "config_stream_exhausted",
        "the config stream takes no new entries: its last entry id is the largest possible. "
        "An operator must reset it (docs/operations.md, 'Config stream exhausted')",
    )


def _too_deep(_: Request[Any, Any, Any], exc: RecursionError) -> Response[ErrorResponse]:
    # The one source of a RecursionError in a request is the JSON decoder meeting a body
    # nested thousands of levels deep (``[[[[...``): client input, so a 400, not a 500.
    _log.info("request body nested too deeply: %s", exc)
    return error_response(
        HTTP_400_BAD_REQUEST, "validation_error", "malformed JSON body: nested too deeply"
    )


def _not_utf8(_: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[ErrorResponse]:
    # The JSON decoder raises this (not a decode error) for a string that is not UTF-8, e.g.
    # ``{"tokens": "\xff"}``: client input, so a 400, not a 500.
    _log.info("request body is not UTF-8: %s", exc)
    return error_response(
        HTTP_400_BAD_REQUEST, "validation_error", "malformed JSON body: not valid UTF-8"
    )


def _internal(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    _log.exception("unhandled error", exc_info=exc)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "internal error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ValidationException: _validation,
    HTTPException: _http,
    Throttled: _throttled,
    InvalidKeyError: _invalid_key,
    LimitValidationError: _limit,
    NotFoundError: _not_found,
    RedisUnavailableError: _unavailable,
    StreamExhaustedError: _exhausted,
    RecursionError: _too_deep,
    UnicodeDecodeError: _not_utf8,
    Exception: _internal,
}
