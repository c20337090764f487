"""riskd replay for analysts (issue 19): inverse and custom markets, a living population,
funding, book mode, fund caps, the per-minute table, comparisons and clean errors."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from riskd.replay import driver, population, prices, report

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BLACK_THURSDAY = SHARED / "2020-03-12_binance-usdm_BTCUSDT_perp_1m.csv"
ETH_10M = SHARED / "2020-03-12_coinapi-unknown-venue_ETHUSD_10m.csv"


def run(settings: driver.Settings, bars: list[prices.Bar]) -> dict[str, Any]:
    with driver.spawn(settings) as daemon:
        raw = asyncio.run(driver.replay(settings, bars, daemon, progress=False))
    raw.source = {"name": "test", "generated": True}
    raw.fund_policy = driver.check(settings).funds.get(raw.info.asset)
    return report.build(raw)


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "riskd.cli", "replay", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def assert_table_adds_up(r: dict[str, Any]) -> None:
    """The per-minute rows sum to the totals, which come from the daemon's events."""
    rows = r["minutes"]
    assert len(rows) == r["path"]["bars"]
    liq = r["liquidations"]
    assert sum(x["liquidations_long"] + x["liquidations_short"] for x in rows) == liq["count"]
    assert sum(x["liquidated_notional"] for x in rows) == liq["notional"]
    assert sum(sum(x["liquidations_by_leverage"].values()) for x in rows) == liq["count"]
    adl = r["adl"]
    assert sum(x["adl_notional"] for x in rows) == adl["deleveraged_notional"]
    for reason, tot in adl["by_reason"].items():
        assert sum(x["adl_notional_by_reason"].get(reason, 0) for x in rows) == tot["notional"]
    assert sum(x["overshoot"] for x in rows) == adl["overshoot"]
    assert sum(x["haircut"] for x in rows) == adl["haircut"]
    assert sum(x["shortfalls_paid"] for x in rows) == r["shortfalls"]["absorbed"]
    assert rows[-1]["fund_balance"] == r["fund"]["final"]
    assert rows[-1]["open_interest"] == r["positions"]["open_interest_at_end"]
    # Open interest is rebuilt from fills and events; it ends where the daemon's is.
    assert r["positions"]["rebuilt_matches_daemon"]
    for e in adl["events"]:
        assert e["reason"] in ("fund_empty", "market_cap", "drawdown_limit", "no_book", "backstop")
        assert e["overshoot"] >= 0 and 0 < len(e["accounts"]) <= e["counterparties"]


def test_living_population_arrives_and_leaves_throughout_the_path() -> None:
    kw: dict[str, Any] = {
        "price": 6_000_000, "bars": 1440, "unit_value": 10, "scale": 10**6, "step": 1,
        "tiers": [population.Tier(0, 125), population.Tier(50_000 * 10**6, 100)],
        "leverage_mix": "venue", "hold_bars": 240,
    }  # fmt: skip
    a = population.build(2000, 5, **kw)
    assert a == population.build(2000, 5, **kw)
    at_start = sum(t.entry_bar == 0 for t in a)
    # The stationary share: hold / (bars + hold) = 240 / 1680 ≈ 14 %.
    assert 200 <= at_start <= 380
    assert sum(t.entry_bar >= 1000 for t in a) > 300  # arrivals late in the day too
    leave = [t.exit_bar - t.entry_bar for t in a if t.exit_bar is not None]
    assert len(leave) > 1000 and all(d >= 1 for d in leave)
    assert 200 <= sum(leave) // len(leave) <= 280  # mean stay ≈ hold
    # Venue leverage: small accounts trade high leverage, large ones low.
    small = [t.leverage for t in a if t.quantity * 60_000 < 10_000 * 1000]
    large = [t.leverage for t in a if t.quantity * 60_000 >= 10_000 * 1000]
    assert sum(x >= 20 for x in small) * 100 // len(small) >= 45
    assert sum(x > 10 for x in large) * 100 // len(large) <= 12
    static = population.build(500, 5, **{**kw, "living": False})
    assert all(t.exit_bar is None for t in static)


def test_inverse_market_with_funding_end_to_end() -> None:
    s = driver.Settings(
        accounts=60, fund=Decimal(0), seed=3, market="BTC-USD", funding_interval_s=1800
    )
    r = run(s, prices.generated_crash()[:110])
    assert r["market"]["contract_type"] == "inverse" and r["market"]["asset"] == "BTC"
    assert r["inputs"]["rejected"] == 0
    assert r["inputs"]["funding_rates"] == 3 == len(r["funding"])  # 00:30, 01:00, 01:30
    assert r["liquidations"]["count"] > 5 and r["adl"]["executions"] > 0
    assert r["conservation"]["ok"] and r["crosscheck"]["ok"], r["crosscheck"]
    assert_table_adds_up(r)
    assert r["positions"]["left_by_choice"] > 0


def test_custom_market_from_a_config_file(tmp_path: Path) -> None:
    """An alt-coin market with a 0.00001 tick, served only by the --config file."""
    cfg = tmp_path / "alt.toml"
    cfg.write_text(
        "[server]\nplaintext = true\n\n[assets.USDT]\ndecimals = 6\n\n"
        '[markets.ALT-USDT]\ncontract_type = "linear"\nasset = "USDT"\nprice_decimals = 5\n'
        'tick_size = 1\nquantity_decimals = 0\nstep_size = 1\nliquidation_mode = "takeover"\n'
        'adl_policy = "pnl_leverage"\ntiers = [[0, 50, 10000], [100000, 20, 25000]]\n'
    )
    csv_path = tmp_path / "alt.csv"
    rows = [
        ",".join([str(b.ts_ms), *(str(v.scaleb(-6)) for v in (b.open, b.high, b.low, b.close))])
        for b in prices.generated_crash()[:105]
    ]
    csv_path.write_text("ts_ms,open,high,low,close\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    p = cli(str(csv_path), "--config", str(cfg), "--market", "ALT-USDT", "--accounts", "50",
            "--fund", "0", "--seed", "2", "--quiet", "--out", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads((out / "report.json").read_text())
    assert r["market"]["symbol"] == "ALT-USDT" and r["market"]["price_decimals"] == 5
    assert Decimal(r["path"]["open"]) == Decimal("0.06") and r["liquidations"]["count"] > 0
    assert r["conservation"]["ok"] and r["crosscheck"]["ok"]
    table = list(csv.DictReader(io.StringIO((out / "minutes.csv").read_text())))
    assert len(table) == 105 and table[0]["mark"].startswith("0.0")


def test_compare_book_mode_and_fund_cap_with_deltas(tmp_path: Path) -> None:
    out = tmp_path / "out"
    p = cli("--generated", "--bars", "110", "--accounts", "60", "--seed", "3",
            "--fund", "100000", "--quiet", "--out", str(out),
            "--compare", "liquidation-mode=takeover,book",
            "--compare", "fund-cap=none,50")  # fmt: skip
    assert p.returncode == 0, p.stderr
    runs = json.loads((out / "compare.json").read_text())
    assert len(runs) == 4
    by = {(x["report"]["settings"]["liquidation_mode"], x["report"]["settings"]["fund_cap"]):
          x["report"] for x in runs}  # fmt: skip
    for r in by.values():
        assert r["inputs"]["rejected"] == 0
        assert r["conservation"]["ok"] and r["crosscheck"]["ok"], r["crosscheck"]
        assert_table_adds_up(r)
    book = by[("book", None)]
    assert book["market"]["liquidation_mode"] == "book"
    assert book["inputs"]["liquidation_fills"] > 0
    assert sum(book["inputs"]["book_orders"].values()) == book["liquidations"]["count"]
    capped = by[("takeover", "50")]
    assert "market_cap" in capped["adl"]["by_reason"]
    assert by[("takeover", None)]["adl"]["executions"] < capped["adl"]["executions"]
    table = (out / "compare.md").read_text()
    assert "Δ fund=100000" in table and "ADL accounts shared with baseline" in table
    assert runs[0]["overlap_with_baseline"]["jaccard_ppm"] == 10**6


def test_cross_share_runs_half_the_traders_in_cross_margin(tmp_path: Path) -> None:
    """Cross traders keep their whole deposit as collateral: nothing refused, the
    identity recomputed from queries (cross equity included) holds."""
    out = tmp_path / "out"
    p = cli("--generated", "--bars", "110", "--accounts", "60", "--seed", "3",
            "--cross-share", "50", "--quiet", "--out", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads((out / "report.json").read_text())
    assert r["settings"]["cross_share"] == 50 and r["conservation"]["ok"]
    assert r["conservation"]["recomputed"]["difference"] == 0
    assert r["liquidations"]["count"] > 0


def test_partial_fraction_policy_runs_within_the_rules(tmp_path: Path) -> None:
    out = tmp_path / "out"
    p = cli("--generated", "--bars", "110", "--accounts", "60", "--seed", "3", "--fund", "0",
            "--partial", "fraction", "--fee-cap", "1%", "--quiet", "--out", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads((out / "report.json").read_text())
    assert r["settings"]["partial"] == "fraction" and r["conservation"]["ok"]
    assert r["liquidations"]["count"] > r["positions"]["liquidated"]  # steps, then the rest


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--market", "NOPE-USDT"], "--market 'NOPE-USDT': not in the config"),
        (["--config", "/nonexistent/riskd.toml"], "--config /nonexistent/riskd.toml"),
        (["--partial", "fraction"], "needs a liquidation fee cap below 100 %"),
        (["--compare", "colour=red"], "--compare 'colour=red'"),
        (["--compare", "fund=1,x"], "--compare fund"),
        (["--fee-cap", "200%"], "fee cap '200%'"),
        (["--funding-rate", "lots"], "funding rate 'lots'"),
        (["--margin-mode", "portfolio"], "--margin-mode 'portfolio': want isolated or cross"),
        (["--cross-share", "101"], "--cross-share 101: want 0 to 100"),
        (["--start", "2030-01-01"], "--start/--end: no bar in the window"),
        (["--start", "yesterday"], "--start 'yesterday'"),
        (["--fund-cap", "1.5"], "--fund-cap 1.5"),
        (["--accounts", "0"], "--accounts 0"),
        (["--fund", "1e30"], "--fund 1E+30: at most"),
        (["--reference", "/nonexistent.csv"], "/nonexistent.csv"),
        (["--metrics", "http://127.0.0.1:1/metrics"], "--metrics is for a --target daemon"),
        (["--adl-policy", "random"], "--adl-policy: invalid choice: 'random'"),
        (["--accounts", "many"], "--accounts: invalid int value: 'many'"),
    ],
)
def test_unsupported_options_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    p = cli("--generated", "--quiet", "--out", "/nonexistent/out", *args, timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("riskd replay: "), p.stderr
    assert says in p.stderr


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not a"),
        (b"ts,open,high\n1584052740000,1,2\n", "want ts, open, high, low, close"),
        (b"1584052740000,5,4,6,5\n", "not an OHLC row"),
        (b"1584052740000,nan,1,1,1\n", "not an OHLC row"),
        (b"ts,open,high,low,close\n", "no price rows"),
        (b"1584052800000,5,6,4,5\n1584052740000,5,6,4,5\n", "timestamps must increase"),
    ],
)
def test_bad_price_files_are_one_line_and_exit_2(tmp_path: Path, content: bytes, says: str) -> None:
    f = tmp_path / "bad.csv"
    f.write_bytes(content)
    p = cli(str(f), "--quiet", "--out", str(tmp_path / "out"), timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and says in p.stderr, p.stderr


def test_every_compared_setting_names_its_run() -> None:
    from riskd.replay import variants

    runs = variants(driver.Settings(), ["seed=1,2", "population=living,static"])
    labels = [r.label() for r in runs]
    assert len(set(labels)) == 4 and "seed=2 population=static" in labels[-1]


def test_reference_file_needs_its_column(tmp_path: Path) -> None:
    ref = tmp_path / "ref.csv"
    ref.write_text("ts_ms,adl_usd\n1767229200000,1000\n1767229260000,2500\n")
    got = report.read_reference(f"{ref}:adl_usd")
    assert got["points"][1] == (1767229260000, 2500.0) and got["name"] == "ref.csv:adl_usd"
    assert report.read_reference(str(ref))["name"] == "ref.csv:adl_usd"
    with pytest.raises(ValueError, match="no column 'qty'"):
        report.read_reference(f"{ref}:qty")


@pytest.mark.skipif(not BLACK_THURSDAY.exists(), reason="../shared/data is not available")
def test_black_thursday_window_with_reference_overlay(tmp_path: Path) -> None:
    """A 40-minute window cut with --start/--end from the real file, into the crash."""
    ref = tmp_path / "ref.csv"
    ref.write_text("ts_ms,adl\n1584057600000,100000\n1584057660000,50000\n")
    out = tmp_path / "out"
    p = cli(str(BLACK_THURSDAY), "--start", "2020-03-13T01:40", "--end", "2020-03-13T02:19",
            "--accounts", "80", "--fund", "1000", "--quiet", "--out", str(out),
            "--reference", f"{ref}:adl")  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads((out / "report.json").read_text())
    assert r["path"]["bars"] == 40 and r["source"]["window"][0] == 1584063600000
    assert r["conservation"]["ok"] and r["crosscheck"]["ok"] and r["inputs"]["rejected"] == 0
    assert r["liquidations"]["count"] > 0
    assert (out / "minutes.csv").read_text().count("\n") == 41
    pytest.importorskip("matplotlib")
    assert (out / "replay.png").stat().st_size > 20_000


@pytest.mark.skipif(not ETH_10M.exists(), reason="../shared/data is not available")
def test_ten_minute_bars_on_eth() -> None:
    bars = prices.read_klines(ETH_10M)[60:90]  # 10:00 to 15:00, the first leg down
    r = run(driver.Settings(accounts=60, fund=Decimal(0), seed=4, market="ETH-USDT"), bars)
    assert r["path"]["interval_ms"] == 600_000 and len(r["minutes"]) == 30
    assert r["conservation"]["ok"] and r["crosscheck"]["ok"] and r["inputs"]["rejected"] == 0
    assert_table_adds_up(r)
