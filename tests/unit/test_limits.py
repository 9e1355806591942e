"""Limit validation rules that span fields."""

from __future__ import annotations

import msgspec
import pytest

from schemas.limits import MAX_GCRA_TOLERANCE_US, Limit


def test_gcra_tolerance_must_stay_exact_in_doubles() -> None:
    assert Limit(1, 2_678_400_000, "gcra", burst=100).burst == 100
    with pytest.raises(msgspec.ValidationError, match="gcra: burst × window / requests"):
        msgspec.json.decode(
            b'{"requests":1,"window_ms":2678400000,"algorithm":"gcra","burst":10000000}',
            type=Limit,
        )
    assert MAX_GCRA_TOLERANCE_US < 2**53


def test_token_bucket_accepts_the_same_extremes() -> None:
    limit = Limit(1, 2_678_400_000, "token_bucket", burst=1_000_000_000)
    assert limit.capacity == 1_000_000_000


@pytest.mark.parametrize("algorithm", ["sliding_window", "fixed_window"])
def test_windows_take_no_burst(algorithm: str) -> None:
    body = b'{"requests":5,"window_ms":1000,"algorithm":"%s","burst":2}' % algorithm.encode()
    with pytest.raises(msgspec.ValidationError, match="burst applies to token_bucket and gcra"):
        msgspec.json.decode(body, type=Limit)
