"""Throttler's Python client: sync and async clients, and an ASGI middleware.

::

    from throttler_client import ThrottlerClient

    with ThrottlerClient("http://localhost:8080") as throttler:
        decision = throttler.check("user-42")
        if not decision.allowed:
            ...  # answer 429, retry after decision.retry_after_ms

Documentation: docs/clients.md in the Throttler repository.
"""

from __future__ import annotations

from throttler_client.async_client import AsyncThrottlerClient
from throttler_client.base import VERSION
from throttler_client.cache import DenialCache
from throttler_client.client import ThrottlerClient
from throttler_client.errors import (
    ConflictError,
    InvalidKeyError,
    NoConcurrencyLimitError,
    NotFoundError,
    ThrottlerError,
    ThrottlerTimeoutError,
    ThrottlerUnavailableError,
    UnauthorizedError,
    ValidationError,
)
from throttler_client.middleware import ThrottlerMiddleware, client_ip
from throttler_client.models import (
    CheckManyResult,
    Decision,
    Lease,
    Limit,
    LimitChange,
    Policy,
    PolicyChange,
)

__version__ = VERSION

__all__ = [
    "AsyncThrottlerClient",
    "CheckManyResult",
    "ConflictError",
    "Decision",
    "DenialCache",
    "InvalidKeyError",
    "Lease",
    "Limit",
    "LimitChange",
    "NoConcurrencyLimitError",
    "NotFoundError",
    "Policy",
    "PolicyChange",
    "ThrottlerClient",
    "ThrottlerError",
    "ThrottlerMiddleware",
    "ThrottlerTimeoutError",
    "ThrottlerUnavailableError",
    "UnauthorizedError",
    "ValidationError",
    "__version__",
    "client_ip",
]
