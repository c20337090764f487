"""Replays end to end against a real daemon (spawned per run), checked against the daemon."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from riskd.replay import driver, prices, report
from riskd.v1 import admin_pb2, admin_pb2_grpc, query_pb2, query_pb2_grpc

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BLACK_THURSDAY = SHARED / "2020-03-12_binance-usdm_BTCUSDT_perp_1m.csv"

# The generated path's crash (minutes 60-105, flash wicks at 88, 97, 99) with an
# empty fund: liquidations with surplus, shortfalls absorbed, and ADL.
SHORT_BARS, SHORT_ACCOUNTS = 110, 80


def generated(bars: int) -> list[prices.Bar]:
    return prices.generated_crash()[:bars]


def run(settings: driver.Settings, bars: list[prices.Bar], inspect: Any = None) -> dict[str, Any]:
    """One replay on a spawned daemon; ``inspect(daemon)`` runs while it is still up."""
    with driver.spawn(settings) as daemon:
        raw = asyncio.run(driver.replay(settings, bars, daemon, progress=False))
        raw.source = {"name": "test", "generated": True}
        r = report.build(raw)
        if inspect is not None:
            inspect(daemon, r)
    return r


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_generated_crash_end_to_end_agrees_with_the_daemon() -> None:
    s = driver.Settings(accounts=SHORT_ACCOUNTS, fund=Decimal(0), seed=3)
    seen: dict[str, Any] = {}

    def inspect(daemon: driver.Daemon, r: dict[str, Any]) -> None:
        # The daemon's own answers, read here independently of the report code.
        ch = grpc.insecure_channel(daemon.target)
        q = query_pb2_grpc.QueryServiceStub(ch)
        fund = q.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT")).fund
        state = admin_pb2_grpc.AdminServiceStub(ch).CheckState(admin_pb2.CheckStateRequest())
        assert daemon.metrics_url
        with urllib.request.urlopen(daemon.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        ledger: list[Any] = []
        token = 0
        while True:
            page = q.ListFundLedger(
                query_pb2.ListFundLedgerRequest(asset="USDT", page_token=token, page_size=1000)
            )
            ledger += page.entries
            if not (token := page.next_page_token):
                break
        ch.close()
        seen.update(fund=fund, state=state, text=text, ledger=ledger)

    r = run(s, generated(SHORT_BARS), inspect)
    fund, state, text, ledger = seen["fund"], seen["state"], seen["text"], seen["ledger"]
    m = {"market": "BTC-USDT"}

    # Something happened, of every kind the report is about.
    liq = r["liquidations"]
    assert liq["count"] > 10 and liq["notional"] > 0
    assert liq["by_outcome"].get("surplus", 0) > 0
    assert r["shortfalls"]["count"] > 0 and r["clawback"]["collected"] > 0
    assert r["adl"]["executions"] > 0 and r["adl"]["deleveraged_notional"] > 0
    assert r["positions"]["closed_by_liquidation"] > 0
    assert r["inputs"]["rejected"] == 0
    assert sum(x["count"] for x in liq["per_minute"]) == liq["count"]
    assert sum(x["notional"] for x in liq["per_minute"]) == liq["notional"]

    # Conservation: the daemon's check and the report's recomputation.
    assert list(state.violations) == [] and r["conservation"]["violations"] == []
    assert r["conservation"]["digest"] == state.digest
    assert r["conservation"]["recomputed"]["difference"] == 0
    assert r["conservation"]["ok"]

    # Report totals == the daemon's queries and metrics.
    assert r["crosscheck"]["ok"], {
        k: c for k, c in r["crosscheck"]["checks"].items() if not c["ok"]
    }
    assert r["fund"]["final"] == fund.balance == ledger[-1].balance_after
    assert r["fund"]["final"] == metric(text, "riskd_insurance_fund_balance_quantums", asset="USDT")
    assert [b for _, b in r["fund"]["series"]] == [e.balance_after for e in ledger]
    for outcome in ("surplus", "absorbed", "adl"):
        got = metric(text, "riskd_liquidations_total", outcome=outcome, **m)
        assert liq["by_outcome"].get(outcome, 0) == got
    assert r["adl"]["executions"] == metric(text, "riskd_adl_events_total", **m)
    assert r["adl"]["deleveraged_notional"] == metric(
        text, "riskd_adl_closed_notional_quantums_total", **m
    )
    assert r["adl"]["overshoot"] == metric(text, "riskd_adl_overshoot_quantums_total", **m)
    assert r["shortfalls"]["absorbed"] == metric(
        text, "riskd_insurance_fund_outflow_quantums_total", asset="USDT", kind="shortfall"
    )
    assert r["clawback"]["collected"] == metric(
        text, "riskd_insurance_fund_inflow_quantums_total", asset="USDT", kind="liquidation_fee"
    )


def test_same_seed_same_report_and_digest() -> None:
    s = driver.Settings(accounts=50, fund=Decimal(0), seed=11)
    bars = generated(105)
    a = report.deterministic(run(s, bars))
    b = report.deterministic(run(s, bars))
    assert a["conservation"]["digest"] == b["conservation"]["digest"]
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = run(driver.Settings(accounts=50, fund=Decimal(0), seed=12), bars)
    assert c["conservation"]["digest"] != a["conservation"]["digest"]


@pytest.mark.skipif(not BLACK_THURSDAY.exists(), reason="../shared/data is not available")
def test_real_window_black_thursday() -> None:
    bars = prices.read_klines(BLACK_THURSDAY)[:200]  # 22:39 → 01:58, into the crash
    r = run(driver.Settings(accounts=120, fund=Decimal(10_000), seed=1), bars)
    assert r["path"]["bars"] == 200 and r["inputs"]["marks"] == 800
    assert r["liquidations"]["count"] > 0
    assert r["conservation"]["ok"] and r["crosscheck"]["ok"], r["crosscheck"]


def test_cli_compare_writes_table_plot_and_reports(tmp_path: Path) -> None:
    csv = tmp_path / "path.csv"  # a user's own CSV: headerless, Binance's 12 columns
    rows = [
        f"{b.ts_ms},{b.open},{b.high},{b.low},{b.close},1,{b.ts_ms + 59_999},1,1,1,1,0"
        for b in generated(105)
    ]
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "replay", str(csv), "--accounts", "40",
         "--compare", "fund=0,1000000", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    table = (out / "compare.md").read_text()
    assert "fund=0 adl=pnl_leverage" in table and "fund=1000000 adl=pnl_leverage" in table
    assert "| setting |" in p.stdout
    runs = json.loads((out / "compare.json").read_text())
    assert [x["report"]["settings"]["fund"] for x in runs] == ["0", "1000000"]
    assert all(x["report"]["conservation"]["ok"] for x in runs)
    for sub in out.iterdir():
        if sub.is_dir():
            assert (sub / "report.json").exists() and (sub / "summary.md").exists()
    pytest.importorskip("matplotlib")
    assert (out / "compare.png").stat().st_size > 10_000


def test_cli_generated_path_says_so(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "replay", "--bars", "30", "--accounts", "20",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "generated crash path" in p.stderr
    assert "generated (synthetic)" in (tmp_path / "summary.md").read_text()
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["source"]["generated"] is True and r["path"]["bars"] == 30


def test_target_daemon_gets_policy_by_api_and_reports_only_its_own_run() -> None:
    """Against an existing daemon (--target): policy set with UpdateMarket, and a second
    replay on the same daemon reports only its own events and metric deltas."""
    bars = generated(105)
    with driver.spawn(driver.Settings()) as own:  # default policy: pnl_leverage, cap 100 %
        target = driver.Daemon(own.target, own.metrics_url)
        s = driver.Settings(accounts=40, fund=Decimal(0), adl_policy="leverage_pnl")
        s = driver.Settings(**{**s.__dict__, "fee_cap_ppm": 500_000})
        reports = []
        for n, first in enumerate((1001, 5001)):
            raw = asyncio.run(
                driver.replay(
                    s, bars, target, progress=False, epoch=100 + n, first_account=first,
                    gateway_id=f"replay-{n}",
                )
            )  # fmt: skip
            reports.append(report.build(raw))
        ch = grpc.insecure_channel(own.target)
        markets = query_pb2_grpc.QueryServiceStub(ch).ListMarkets(query_pb2.ListMarketsRequest())
        ch.close()
    m = next(m for m in markets.markets if m.symbol == "BTC-USDT")
    assert m.liquidation_fee_cap_ppm == 500_000
    for r in reports:
        assert r["crosscheck"]["ok"], r["crosscheck"]
        assert r["conservation"]["ok"]
        assert r["liquidations"]["count"] > 0
    # The second run starts where the first left the fund, and counts only its own flows.
    assert reports[1]["fund"]["initial"] == reports[0]["fund"]["final"]
