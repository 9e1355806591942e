"""Pieces shared by the lean routes (:mod:`api.checks`, :mod:`api.spend`): the error
answer they raise, and one strict decode of a JSON body."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from api.strict import decode_whole_numbers, validation_problem
from schemas.http import CheckDenied

if TYPE_CHECKING:
    from api.headers import Header
    from core.limiter import CheckResult

__all__ = ["AnswerError", "bad", "decode_body", "denied"]


class AnswerError(Exception):
    """An error answer, raised from anywhere in a request and sent by ``LeanChecks._serve``."""

    def __init__(
        self, status: int, code: str, message: str, headers: list[Header] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or []


def bad(message: str) -> AnswerError:
    return AnswerError(400, "validation_error", message)


def denied(result: CheckResult, message: str) -> CheckDenied:
    """The 429 body of a denied check or acquire: ``message``, then "; retry after N ms"."""
    return CheckDenied(
        allowed=False,
        remaining=result.remaining,
        limit=result.limit,
        retry_after_ms=result.retry_after_ms,
        reset_after_ms=result.reset_after_ms,
        error="rate_limit_exceeded",
        message=f"{message}; retry after {result.retry_after_ms} ms",
        policy=result.policy,
    )


def decode_body(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        try:
            return decoder.decode(body)
        except msgspec.ValidationError as exc:
            if "got `float`" not in str(exc):
                raise
            # 10.0 is an integer in JSON Schema (api.strict); only such bodies take this path.
            return decode_whole_numbers(body, decoder.type)
    except msgspec.ValidationError as exc:
        field, message = validation_problem(exc)
        if field is None and message.startswith("Expected"):  # the body's own type
            message = f"JSON body: {message}"
        raise bad(f"{field}: {message}" if field else message) from None
    except msgspec.DecodeError as exc:
        raise bad(f"malformed JSON body: {exc}") from None
    except UnicodeDecodeError:
        raise bad("malformed JSON body: not valid UTF-8") from None
    except RecursionError:
        raise bad("malformed JSON body: nested too deeply") from None
