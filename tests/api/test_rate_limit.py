"""The per-gateway token bucket, on a fake clock."""

from __future__ import annotations

import pytest

from riskd.api.rate_limit import TokenBucket


def test_refills_at_the_rate_up_to_the_burst() -> None:
    b = TokenBucket(rate=10, burst=20, now=0.0)
    assert b.take(20, 0.0) == 0.0
    assert b.take(1, 0.0) == pytest.approx(0.1)
    assert b.take(5, 0.5) == 0.0  # 5 tokens came back in half a second
    assert b.take(1, 0.5) == pytest.approx(0.1)
    assert b.take(20, 100.0) == 0.0  # never more than the burst saved up
    assert b.take(1, 100.0) > 0


def test_a_full_bucket_lets_an_oversized_batch_through_into_debt() -> None:
    b = TokenBucket(rate=10, burst=5, now=0.0)
    assert b.take(25, 0.0) == 0.0
    assert b.take(1, 1.0) == pytest.approx(1.1)  # 20 in debt, 10 paid back: 11 short
    assert b.take(1, 2.1) == 0.0
