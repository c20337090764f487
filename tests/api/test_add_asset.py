"""AddAsset: a settlement asset added at runtime, through a real daemon (issue 16).

Its wallets and fund work at once, a market settles in it, and it survives
a crash (journal replay from a writer process's snapshot) and a clean
restart (the in-process snapshot) with the same digest; the offline audit
replays the journal to the same state.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from riskd import config as config_mod
from riskd.audit import audit
from riskd.v1 import (
    admin_pb2,
    events_pb2,
    events_pb2_grpc,
    ingest_pb2,
    query_pb2,
    types_pb2,
)

from .conftest import Daemon, start_daemon
from .test_bad_input import RawStream
from .test_lifecycle import admin, fill, margin, mark, markets, query, state

U = ingest_pb2.Update
USDC = 10**6
SOL = "SOL-USDC"


def deposit(account: int, amount: int) -> ingest_pb2.Update:
    return U(deposit=ingest_pb2.Deposit(account=account, asset="USDC", amount=amount))


def scrape(d: Daemon) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def sol_usdc() -> types_pb2.Market:
    return types_pb2.Market(
        symbol=SOL,
        contract_type=types_pb2.CONTRACT_TYPE_LINEAR,
        settle_asset="USDC",
        price_decimals=2,
        quantity_decimals=2,
        tiers=[
            types_pb2.RiskTier(
                notional_floor=0, max_leverage=20, maintenance_margin_rate_ppm=25_000
            )
        ],
    )


def fund(d: Daemon) -> tuple[int, list[int]]:
    """USDC's fund balance and its ledger's amounts."""
    f = query(d).GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDC")).fund
    ledger = query(d).ListFundLedger(query_pb2.ListFundLedgerRequest(asset="USDC")).entries
    return f.balance, [e.amount for e in ledger]


def test_an_asset_added_at_runtime_works_at_once_and_survives_restarts(tmp_path: Path) -> None:
    config = tmp_path / "riskd.toml"
    toml = config_mod.default_toml()
    config.write_text(toml.replace("snapshot_seconds = 300", "snapshot_seconds = 0.2"))
    d = start_daemon(tmp_path, "--config", str(config))
    a = admin(d)
    added = a.AddAsset(
        admin_pb2.AddAssetRequest(symbol="USDC", decimals=6, fund_drawdown_limit_ppm=500_000)
    ).asset
    assert (added.symbol, added.decimals) == ("USDC", 6)
    assets = query(d).ListAssets(query_pb2.ListAssetsRequest()).assets
    assert ("USDC", 6) in [(x.symbol, x.decimals) for x in assets]
    assert 'riskd_asset_decimals{asset="USDC"} 6.0' in scrape(d)
    a.InjectFund(admin_pb2.InjectFundRequest(asset="USDC", amount=500 * USDC, cause="seed"))
    assert fund(d) == (500 * USDC, [500 * USDC])
    assert 'riskd_insurance_fund_balance_quantums{asset="USDC"} 5e+08' in scrape(d)
    events = events_pb2_grpc.EventServiceStub(d.channel()).Subscribe(
        events_pb2.SubscribeRequest(from_sequence=1), timeout=2
    )
    flows = []
    with pytest.raises(grpc.RpcError):  # the deadline ends the subscription
        for e in events:
            if e.event.HasField("fund_flow"):
                flows.append((e.event.fund_flow.asset, e.event.fund_flow.balance_after))
    assert flows == [("USDC", 500 * USDC)]  # the fund stream shows it
    a.AddMarket(admin_pb2.AddMarketRequest(market=sol_usdc()))
    s = RawStream(d, "gw-usdc", epoch=1)
    r = s.send(
        deposit(3, 1_000 * USDC),
        deposit(4, 1_000 * USDC),
        margin(3, SOL, 100 * USDC),
        margin(4, SOL, 100 * USDC),
        mark(SOL, 15_000),
        fill(SOL, 1, 3, 4, 15_000, 500),  # 3 long 5 SOL at 150.00
    )
    assert list(r.rejections) == [], r
    s.close()
    checked = state(d)
    assert checked.violations == []  # conservation covers USDC too
    before = checked.digest
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # a writer process's snapshot after the fill
        written = [
            json.loads(x) for x in d.log.read_text().splitlines() if '"snapshot_written"' in x
        ]
        if written and written[-1]["records"] >= 5:  # settings, asset, fund, market, batch
            break
        time.sleep(0.05)
    else:
        raise AssertionError(d.log.read_text())
    a.InjectFund(admin_pb2.InjectFundRequest(asset="USDC", amount=USDC, cause="after"))
    before = state(d).digest
    d.process.send_signal(signal.SIGKILL)
    d.process.wait(10)

    d = start_daemon(tmp_path, "--config", str(config))
    try:
        recovered = json.loads(
            next(x for x in d.log.read_text().splitlines() if '"riskd_recovered"' in x)
        )
        assert recovered["snapshot_records"] >= 5 and recovered["replayed"] >= 1
        assert state(d).digest == before and SOL in markets(d)
        assert fund(d) == (501 * USDC, [500 * USDC, USDC])
        pos = query(d).GetPosition(query_pb2.GetPositionRequest(account=3, market=SOL)).position
        assert pos.size == 500
        got = query(d).GetAccount(query_pb2.GetAccountRequest(account=4, asset="USDC"))
        assert got.wallet_balance == 900 * USDC
    finally:
        assert d.stop() == 0, d.log.read_text()

    d = start_daemon(tmp_path, "--config", str(config))  # from the shutdown snapshot
    try:
        assert state(d).digest == before and fund(d) == (501 * USDC, [500 * USDC, USDC])
    finally:
        assert d.stop() == 0, d.log.read_text()
    ok, lines = audit(config_mod.load(config), tmp_path / "data")
    assert ok, lines

    # The file declares the asset since: the same decimals start (its fund
    # settings from the file on), other decimals refuse the start naming the key.
    declared = config.read_text() + (
        "\n[assets.USDC]\ndecimals = {d}\n[assets.USDC.fund]\ndrawdown_limit_ppm = 400000\n"
        '\n[markets.SOL-USDC]\ncontract_type = "linear"\nasset = "USDC"\nprice_decimals = 2\n'
        "quantity_decimals = 2\ntick_size = 1\nstep_size = 1\ntiers = [[0, 20, 25000]]\n"
    )
    config.write_text(declared.format(d=8))
    refused = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "serve", "--config", str(config),
         "--grpc-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "assets.USDC.decimals" in refused.stderr, refused.stderr
    config.write_text(declared.format(d=6))
    d = start_daemon(tmp_path, "--config", str(config))
    try:
        assert state(d).digest == before and fund(d) == (501 * USDC, [500 * USDC, USDC])
        assets = query(d).ListAssets(query_pb2.ListAssetsRequest()).assets
        assert [x.symbol for x in assets] == ["BTC", "USDC", "USDT"]
    finally:
        assert d.stop() == 0, d.log.read_text()
