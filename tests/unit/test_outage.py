"""An outage is logged when it starts and when it ends; retries back off in between."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from core.outage import Outage, backoff

if TYPE_CHECKING:
    import pytest


def test_backoff_doubles_up_to_a_ceiling() -> None:
    assert [backoff(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage(logging.getLogger("test.outage"), "hub")
    with caplog.at_level(logging.INFO, logger="test.outage"):
        delays = [outage.failed(ConnectionError("refused")) for _ in range(5)]
        outage.recovered()
        outage.recovered()
        assert outage.failed(ConnectionError("again")) == 0.5  # a new outage starts over
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "hub: redis unavailable (refused); retrying with backoff, quietly, until it answers",
        ),
        ("INFO", "hub: redis answers again after 5 failed attempts"),
        (
            "WARNING",
            "hub: redis unavailable (again); retrying with backoff, quietly, until it answers",
        ),
    ]
