"""Waiting for a condition: poll with a deadline, never sleep-and-hope."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["until"]

T = TypeVar("T")


async def until(
    probe: Callable[[], Awaitable[T | None]], seconds: float = 15.0, interval: float = 0.02
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met within {seconds} s"
        await anyio.sleep(interval)
