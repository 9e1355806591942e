"""Typed errors: one class per JSON error code of the service, one for an unreachable one.

Every error the service answers is ``{"error": code, "message": text}`` with a status; the
client raises the subclass registered for ``code`` (a :class:`ThrottlerError` for a code it
does not know), so callers catch what they can handle::

    try:
        client.set_limit("free:alice", Limit(requests=10, window_ms=60_000))
    except ValidationError as exc:
        print(exc.message)
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ConflictError",
    "InvalidKeyError",
    "NotFoundError",
    "ThrottlerError",
    "ThrottlerTimeoutError",
    "ThrottlerUnavailableError",
    "UnauthorizedError",
    "ValidationError",
    "error_from_answer",
]


class ThrottlerError(Exception):
    """The service refused a call (``status`` and ``code`` as it answered them), or could
    not be asked (``status`` is ``None``)."""

    #: The JSON ``error`` codes this class stands for.
    codes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, message: str, *, code: str = "error", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, status={self.status})"


class ThrottlerUnavailableError(ThrottlerError):
    """The service could not decide: connection refused or reset, no answer in time, or a
    5xx (``redis_unavailable`` when its Redis is down). ``failure_policy="open"`` turns
    this into an allowed, unenforced decision for checks."""

    codes = ("redis_unavailable", "service_unavailable", "internal_error")


class ThrottlerTimeoutError(ThrottlerUnavailableError, TimeoutError):
    """No answer within the client's ``timeout`` (retries included)."""


class InvalidKeyError(ThrottlerError):
    """The key breaks the service's key rules (``400 invalid_key``)."""

    codes = ("invalid_key",)


class ValidationError(ThrottlerError):
    """A body the service refused (``400 validation_error``): a value out of range, or
    ``tokens`` above the limit's capacity."""

    codes = ("validation_error",)


class UnauthorizedError(ThrottlerError):
    """Missing or wrong bearer token (``401 unauthorized``)."""

    codes = ("unauthorized",)


class NotFoundError(ThrottlerError):
    """No such limit, or a route this service version does not have (``404 not_found``)."""

    codes = ("not_found",)


class ConflictError(ThrottlerError):
    """A newer change to the same key was applied first (``409 conflict``)."""

    codes = ("conflict",)


class NoConcurrencyLimitError(ThrottlerError):
    """An acquire of a key that has no concurrency limit (``409 no_concurrency_limit``)."""

    codes = ("no_concurrency_limit",)


_BY_CODE: dict[str, type[ThrottlerError]] = {
    code: cls
    for cls in (
        ThrottlerUnavailableError,
        InvalidKeyError,
        ValidationError,
        UnauthorizedError,
        NotFoundError,
        ConflictError,
        NoConcurrencyLimitError,
    )
    for code in cls.codes
}


def error_from_answer(status: int, body: object) -> ThrottlerError:
    """The error for a non-2xx answer: by its JSON ``error`` code, else by its status."""
    code, message = "error", f"HTTP {status}"
    if isinstance(body, dict):
        code = str(body.get("error", code))
        message = str(body.get("message", message))
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = ThrottlerUnavailableError if status >= 500 else ThrottlerError
    return cls(message, code=code, status=status)
