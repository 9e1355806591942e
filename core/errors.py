"""The project's own error types. Driver errors are wrapped into these at the adapter edge;
``api/`` alone maps them to HTTP statuses."""

from __future__ import annotations

__all__ = [
    "InvalidKeyError",
    "LimitValidationError",
    "NoConcurrencyLimitError",
    "NotFoundError",
    "RedisUnavailableError",
    "SettingsError",
    "StreamExhaustedError",
    "ThrottlerError",
]


class ThrottlerError(Exception):
    """Base of every error this project raises on purpose."""


class SettingsError(ThrottlerError):
    """A setting is missing or invalid; the message names the variable."""


class InvalidKeyError(ThrottlerError):
    """A rate-limit key is not 1-256 characters of ``A-Z a-z 0-9 _ - . :``."""


class LimitValidationError(ThrottlerError):
    """A limit or a check request breaks a rule; the message names the field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NoConcurrencyLimitError(ThrottlerError):
    """A lease was asked of a key that has no concurrency limit."""


class NotFoundError(ThrottlerError):
    """The key has no limit."""


class RedisUnavailableError(ThrottlerError):
    """Redis could not answer in time (down, timing out, or the circuit is open)."""


class StreamExhaustedError(ThrottlerError):
    """A stream can take no new entry: its last entry id is the largest possible (someone
    added ``18446744073709551615-18446744073709551615``). Recovery: docs/operations.md."""
