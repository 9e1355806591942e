"""Strict bodies: a number sent as a string is a wrong type, not a number.

Litestar converts bodies leniently (``"10"`` becomes ``10``), which would let a client's
type mistake through. Handlers call :func:`require_strict` on non-empty bodies; the extra
decode only happens when a body was sent.

An integer may be written as a whole number with a fraction part of zero (``10.0``): that
is an integer in JSON Schema (and so in the OpenAPI document), and what many JSON encoders
write for a whole float. ``10.5`` and ``"10"`` stay wrong types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.exceptions import ValidationException
from litestar.openapi.spec import Operation, RequestBody

if TYPE_CHECKING:
    from litestar import Request

__all__ = ["OptionalBodyOperation", "decode_whole_numbers", "require_strict", "validation_problem"]

_json = msgspec.json.Decoder()


def _whole_numbers_as_ints(value: Any) -> Any:
    """``value`` with every float that is a whole number (``10.0``) made an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_ints(v) for v in value]
    return value


def decode_whole_numbers(body: bytes, body_type: Any) -> Any:
    """``body`` as ``body_type``, strictly, but with ``10.0`` read as the integer 10.

    Slower than a typed decoder: for a body a typed decoder refused with "got `float`".
    """
    return msgspec.convert(_whole_numbers_as_ints(_json.decode(body)), body_type, strict=True)


async def require_strict(request: Request[Any, Any, Any], body_type: Any) -> None:
    body = await request.body()
    if not body.strip():
        return
    try:
        decode_whole_numbers(body, body_type)
    except msgspec.ValidationError as exc:
        field, message = validation_problem(exc)
        raise ValidationException(
            detail="invalid body", extra=[{"key": field, "message": message}]
        ) from None


def validation_problem(exc: msgspec.ValidationError) -> tuple[str | None, str]:
    """(the field, what is wrong with it) from msgspec's ``"... - at `$.field`"``."""
    text, sep, where = str(exc).rpartition(" - at `$.")
    if not sep:
        return None, str(exc)
    return where.rstrip("`"), text


@dataclass
class OptionalBodyOperation(Operation):
    """An operation whose request body may be left out (Litestar marks bodies required)."""

    def __post_init__(self) -> None:
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False
