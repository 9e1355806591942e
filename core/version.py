"""The installed version of the ``throttler`` distribution."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["VERSION"]

try:
    VERSION = version("throttler")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0.0.0+source"
