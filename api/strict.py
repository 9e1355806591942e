"""Strict bodies: a number sent as a string is a wrong type, not a number.

Litestar converts bodies leniently (``"10"`` becomes ``10``), which would let a client's
type mistake through. Handlers call :func:`require_strict` on non-empty bodies; the extra
decode only happens when a body was sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.exceptions import ValidationException
from litestar.openapi.spec import Operation, RequestBody

if TYPE_CHECKING:
    from litestar import Request

__all__ = ["OptionalBodyOperation", "require_strict", "validation_problem"]

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


async def require_strict(request: Request[Any, Any, Any], body_type: Any) -> None:
    body = await request.body()
    if not body.strip():
        return
    decoder = _decoders.get(body_type)
    if decoder is None:
        decoder = _decoders[body_type] = msgspec.json.Decoder(body_type, strict=True)
    try:
        decoder.decode(body)
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
