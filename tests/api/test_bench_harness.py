"""The benchmarks' shared harness: workload stamps and the "a benchmark cannot lie" checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.harness import Sample, bucket_quantile, since, stamp, unexpected
from riskd.config import ServerConfig
from riskd.v1 import query_pb2, query_pb2_grpc

from .conftest import start_daemon


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


def test_the_pre_encoded_load_client_has_every_deposit_applied_once(tmp_path: Path) -> None:
    """benchmarks/load_client.py (two-asset cells of benchmarks/failover.py): its
    bytes are the deposits it claims, numbered without a gap, and its count of
    acknowledged updates is riskd's (a last batch shorter than the others too)."""
    updates = 600  # batches of 256: 256, 256, 88
    d = start_daemon(tmp_path)
    try:
        load = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.load_client", d.target, "gw-load", "USDT",
             str(updates)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, _ = load.communicate("go\n", timeout=60)
        lines = [json.loads(x) for x in out.splitlines()]
        assert lines[0] == {"event": "ready"} and load.returncode == 0
        assert lines[1]["updates"] == updates and lines[1]["rejections"] == 0
        q = query_pb2_grpc.QueryServiceStub(d.channel())
        for account in (1, 100):  # deposits i with 1 + i % 100 == account, of 1 + i % 9 each
            want = sum(1 + i % 9 for i in range(updates) if 1 + i % 100 == account)
            got = q.GetAccount(query_pb2.GetAccountRequest(account=account, asset="USDT"))
            assert got.wallet_balance == want
    finally:
        assert d.stop() == 0
