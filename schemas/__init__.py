"""msgspec Structs for every body on the wire: HTTP, stream entries, notifications. No I/O."""

from __future__ import annotations

from schemas.http import (
    AcceptedResponse,
    CheckAllowed,
    CheckDenied,
    CheckRequest,
    ErrorResponse,
    HealthResponse,
    LimitStatus,
    ReadyResponse,
)
from schemas.limits import ALGORITHMS, Algorithm, Limit

__all__ = [
    "ALGORITHMS",
    "AcceptedResponse",
    "Algorithm",
    "CheckAllowed",
    "CheckDenied",
    "CheckRequest",
    "ErrorResponse",
    "HealthResponse",
    "Limit",
    "LimitStatus",
    "ReadyResponse",
]
