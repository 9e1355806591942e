"""The ``throttler`` command: the one place that wires the API and the workers together."""

from __future__ import annotations

__all__: list[str] = []
