"""The benchmarks' shared harness: workload stamps and the "a benchmark cannot lie" checks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.harness import Sample, bucket_quantile, since, stamp, unexpected
from riskd.config import ServerConfig


@given(t0=st.integers(min_value=0, max_value=2**42), n=st.integers(min_value=0, max_value=10**7))
def test_a_workload_of_ten_million_updates_stays_inside_the_skew_window(t0: int, n: int) -> None:
    window_ms = int(ServerConfig().max_clock_skew_seconds * 1000)
    assert t0 <= stamp(t0, n) <= t0 + window_ms // 2
    assert stamp(t0, n) <= stamp(t0, n + 1)  # a gateway's clock does not run backwards


def test_refusals_liquidations_and_adl_are_problems_unless_expected() -> None:
    samples = [
        Sample("riskd_updates_total", {"kind": "Fill", "outcome": "applied"}, 10.0),
        Sample("riskd_updates_total", {"kind": "Rejected", "outcome": "rejected"}, 3.0),
        Sample("riskd_updates_total", {"kind": "MarkPrice", "outcome": "rejected"}, 0.0),
        Sample("riskd_liquidations_total", {"market": "BTC-USDT", "outcome": "adl"}, 1.0),
        Sample("riskd_adl_events_total", {"market": "BTC-USDT", "reason": "fund_empty"}, 1.0),
    ]
    problems = unexpected(samples)
    assert len(problems) == 3 and "'Rejected'" in problems[0]
    assert len(unexpected(samples, liquidations=True)) == 1
    assert unexpected(samples, liquidations=True, rejections=True) == []
    assert unexpected(samples[:1]) == []


def test_a_quantile_is_read_from_what_happened_between_two_scrapes() -> None:
    def commits(*counts: float) -> list[Sample]:
        bounds = ("0.001", "0.0025", "0.005", "+Inf")
        return [
            Sample("riskd_journal_commit_seconds_bucket", {"le": le}, n)
            for le, n in zip(bounds, counts, strict=True)
        ]

    before = commits(90, 100, 100, 100)  # set-up: 100 fast commits
    during = since(before, commits(100, 190, 199, 200))  # 100 more, mostly slower
    assert bucket_quantile(during, "riskd_journal_commit_seconds", 0.5) == 0.0025
    assert bucket_quantile(during, "riskd_journal_commit_seconds", 0.99) == 0.005
    assert bucket_quantile(during, "riskd_journal_commit_seconds", 1.0) == float("inf")
    assert bucket_quantile(before[:0], "riskd_journal_commit_seconds", 0.5) is None
