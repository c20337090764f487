"""The loss waterfall through the daemon: real gRPC, real journal, real metrics.

A market with a fund loss cap of 50 USDT: a long of 0.02 BTC @ 50,000 with 500 USDT
margin (bankruptcy price 25,000) crashed to 20,000 lacks 100 USDT.  The fund (10,000
USDT, so neither empty nor near its drawdown guard) pays its cap, 50, and only the
other 50 is deleveraged, at the bankruptcy price with those 50 counted as margin:
50,000 - 550 / 0.02 = 22,500, not 25,000.  The execution says why: market_cap.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from riskd import config as config_mod
from riskd.core import Engine
from riskd.core.events import Deposit, Fill, FundInjection, MarginTransfer, MarkPrice
from riskd.core.invariants import digest
from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    types_pb2,
)
from riskd_client.gateway import Gateway

from .conftest import Daemon, start_daemon
from .scenario import USDT, run_engine, send, stamp

M = "BTC-USDT"
AUDIT = [sys.executable, "-m", "riskd.cli", "audit"]


def _events(target: str) -> list[events_pb2.Event]:
    stub = events_pb2_grpc.EventServiceStub(grpc.insecure_channel(target))
    out = []
    try:
        for r in stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=1), timeout=1.5):
            out.append(r.event)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
    return out


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
    assert seen, f"{name}{labels} not in scrape"
    return total


def test_shortfall_beyond_the_cap_fund_pays_the_cap_and_adl_the_rest(tmp_path: Path) -> None:
    toml = config_mod.default_toml().replace("# fund_loss_cap = 250000", "fund_loss_cap = 50", 1)
    config = tmp_path / "riskd.toml"
    config.write_text(toml)
    t = stamp()
    inputs = [
        Deposit(1, "USDT", 1_000 * USDT, t),
        Deposit(2, "USDT", 10_000 * USDT, t),
        MarginTransfer(1, M, 500 * USDT, t),
        MarginTransfer(2, M, 5_000 * USDT, t),
        MarkPrice(M, 5_000_000, t),
        Fill(M, 1, 1, 2, 5_000_000, 20, 0, 0, t),  # 0.02 BTC at 50,000
        MarkPrice(M, 2_000_000, t + 1_000),  # the crash: 1 lacks 100 USDT
    ]
    d = start_daemon(tmp_path, "--config", str(config))
    try:
        admin = admin_pb2_grpc.AdminServiceStub(d.channel())
        admin.InjectFund(
            admin_pb2.InjectFundRequest(asset="USDT", amount=10_000 * USDT, cause="seed")
        )
        query = query_pb2_grpc.QueryServiceStub(d.channel())

        async def go() -> Gateway:
            async with Gateway(d.target, "gw-waterfall", batch_size=2) as gw:
                for x in inputs[:-1]:
                    send(gw, x)
                await gw.flush()
                # Before the crash the query shows the prices that would execute.
                pos = query.GetPosition(query_pb2.GetPositionRequest(account=1, market=M))
                assert pos.position.bankruptcy_price == 2_500_000  # 25,000.00
                assert pos.position.liquidation_price == 2_510_040  # Binance LP 25,100.40
                send(gw, inputs[-1])
                await gw.flush()
            return gw

        gw = asyncio.run(go())
        assert gw.rejections == []

        evs = _events(d.target)
        [adl] = [e.adl_executed for e in evs if e.HasField("adl_executed")]
        assert adl.reason == events_pb2.ADL_REASON_MARKET_CAP
        assert (adl.quantity, adl.price) == (20, 2_250_000)  # 22,500: fund-adjusted BP
        assert (adl.deficit, adl.fund_paid, adl.haircut, adl.overshoot) == (
            100 * USDT,
            50 * USDT,
            50 * USDT,
            0,
        )
        [notice] = [e.adl_notice for e in evs if e.HasField("adl_notice")]
        assert (notice.account, notice.price, notice.quantity) == (2, 2_250_000, 20)
        flows = [
            (e.fund_flow.kind, e.fund_flow.amount)
            for e in evs
            if e.HasField("fund_flow") and e.fund_flow.market == M
        ]
        assert flows == [("shortfall", -50 * USDT)]  # exactly the cap, not 0 nor 100
        [settled] = [e.liquidation_settled for e in evs if e.HasField("liquidation_settled")]
        assert (settled.account, settled.adl_quantity) == (1, 20)

        metrics_url = f"http://127.0.0.1:{d.metrics_port}/metrics"
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            text = r.read().decode()
        assert _metric(text, "riskd_adl_events_total", market=M, reason="market_cap") == 1
        assert _metric(text, "riskd_adl_events_total", market=M, reason="fund_empty") == 0
        assert _metric(text, "riskd_adl_events_total", market=M) == 1
        assert (
            _metric(text, "riskd_adl_closed_notional_quantums_total", market=M, reason="market_cap")
            == 450 * USDT
        )

        fund = query.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT")).fund
        assert fund.balance == 9_950 * USDT
        # The pure engine with the same configuration agrees to the unit.
        cfg = config_mod.load(config)
        engine = Engine(cfg.markets, cfg.funds)
        engine.apply(FundInjection("USDT", 10_000 * USDT, "seed", t))
        run_engine(inputs, engine)
        state = admin.CheckState(admin_pb2.CheckStateRequest())
        assert list(state.violations) == []
        assert state.digest == digest(engine)
    finally:
        assert d.stop() == 0, d.log.read_text()
    # The offline auditor replays the journal and checks the waterfall on the execution.
    audit = subprocess.run(
        [*AUDIT, "--data", str(tmp_path / "data"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "ok   ADL: 1 executions, each paid by the fund as the waterfall says" in audit.stdout


def test_partial_liquidation_policy_through_update_market(daemon: Daemon) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(daemon.channel())

    def update(**fields: object) -> types_pb2.Market:
        market = types_pb2.Market(symbol=M, **fields)  # type: ignore[arg-type]
        return admin.UpdateMarket(admin_pb2.UpdateMarketRequest(market=market)).market

    # A partial policy needs a fee cap below 100 %: refused, naming the field.
    with pytest.raises(grpc.RpcError) as info:
        update(partial_liquidation_policy=types_pb2.PARTIAL_LIQUIDATION_POLICY_FRACTION)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "market.partial_liquidation_policy" in (info.value.details() or "")
    m = update(
        partial_liquidation_policy=types_pb2.PARTIAL_LIQUIDATION_POLICY_FRACTION,
        liquidation_fee_cap_ppm=1_000,
        partial_cooldown_ms=30_000,
        takeover_price=types_pb2.TAKEOVER_PRICE_BANKRUPTCY,
    )
    assert m.partial_liquidation_policy == types_pb2.PARTIAL_LIQUIDATION_POLICY_FRACTION
    assert (m.partial_fraction_ppm, m.partial_cooldown_ms) == (200_000, 30_000)
    # Not given keeps; given changes.
    m = update(partial_fraction_ppm=250_000)
    assert m.partial_liquidation_policy == types_pb2.PARTIAL_LIQUIDATION_POLICY_FRACTION
    assert m.takeover_price == types_pb2.TAKEOVER_PRICE_BANKRUPTCY
    assert m.partial_fraction_ppm == 250_000

    # Long 0.5 BTC @ 50,000 with 500 margin (LP 49,196.78) crossed, solvent, at 49,100:
    # a quarter (0.125 BTC) passes to the backstop; the rest cools down, frozen.
    t = stamp()
    inputs = [
        Deposit(1, "USDT", 1_000 * USDT, t),
        Deposit(2, "USDT", 50_000 * USDT, t),
        MarginTransfer(1, M, 500 * USDT, t),
        MarginTransfer(2, M, 50_000 * USDT, t),
        MarkPrice(M, 5_000_000, t),
        Fill(M, 1, 1, 2, 5_000_000, 500, 0, 0, t),
        MarkPrice(M, 4_910_000, t + 1_000),
    ]

    async def go() -> Gateway:
        async with Gateway(daemon.target, "gw-partial", batch_size=2) as gw:
            for x in inputs:
                send(gw, x)
            await gw.flush()
        return gw

    assert asyncio.run(go()).rejections == []
    evs = _events(daemon.target)
    [step] = [e.liquidation_settled for e in evs if e.HasField("liquidation_settled")]
    # Fee 0.1 % of the 6,137.50 taken over.
    assert (step.account, step.quantity, step.price) == (1, 125, 4_910_000)
    assert (step.fund_delta, step.adl_quantity) == (6_137_500, 0)
    query = query_pb2_grpc.QueryServiceStub(daemon.channel())
    pos = query.GetPosition(query_pb2.GetPositionRequest(account=1, market=M)).position
    assert (pos.size, pos.in_liquidation) == (375, True)
    state = admin.CheckState(admin_pb2.CheckStateRequest())
    assert list(state.violations) == []


_DOMAIN_MARKETS = """
[markets.BYBIT-BTCUSD]
contract_type = "inverse"
asset = "BTC"
contract_value = 100
price_decimals = 2
tick_size = 50
quantity_decimals = 0
step_size = 1
tiers = [[0, 50, 5000]]

[markets.FEE-USDT]
contract_type = "linear"
asset = "USDT"
price_decimals = 2
tick_size = 10
quantity_decimals = 3
step_size = 1
liquidation_fee_cap_ppm = 5000
tiers = [[0, 9, 100000]]
"""


def test_domain_examples_queried_through_the_daemon(tmp_path: Path) -> None:
    """DOMAIN.md §3 through QueryService: the Bybit inverse bankruptcy price, and the
    fee cap on a clawback."""
    config = tmp_path / "riskd.toml"
    config.write_text(config_mod.default_toml() + _DOMAIN_MARKETS)
    t = stamp()
    inv, fee = "BYBIT-BTCUSD", "FEE-USDT"
    btc = 10**8
    # Long 5,000 contracts at 7,890.08 (4,200 at 7,890.00 and 800 at 7,890.50 average
    # 7,890.0800) with the initial margin at 50x, rounded up to the satoshi.
    im = -(-5_000 * 100 * btc * 100 // (789_008 * 50))
    inputs = [
        Deposit(1, "BTC", 2 * btc, t),
        Deposit(2, "BTC", 20 * btc, t),
        MarginTransfer(1, inv, im, t),
        MarginTransfer(2, inv, 10 * btc, t),
        MarkPrice(inv, 789_000, t),
        Fill(inv, 1, 1, 2, 789_000, 4_200, 0, 0, t),
        Fill(inv, 2, 1, 2, 789_050, 800, 0, 0, t),
        # Fee cap: 0.1 BTC long at 60,000 with 900 margin (bankruptcy price 51,000).
        Deposit(3, "USDT", 1_000 * USDT, t),
        Deposit(4, "USDT", 10_000 * USDT, t),
        MarginTransfer(3, fee, 900 * USDT, t),
        MarginTransfer(4, fee, 5_000 * USDT, t),
        MarkPrice(fee, 6_000_000, t),
        Fill(fee, 3, 3, 4, 6_000_000, 100, 0, 0, t),
    ]
    d = start_daemon(tmp_path, "--config", str(config))
    try:

        async def go(batch: list, name: str = "gw-domain") -> Gateway:
            async with Gateway(d.target, name, batch_size=4) as gw:
                for x in batch:
                    send(gw, x)
                await gw.flush()
            return gw

        assert asyncio.run(go(inputs)).rejections == []
        query = query_pb2_grpc.QueryServiceStub(d.channel())
        pos = query.GetPosition(query_pb2.GetPositionRequest(account=1, market=inv)).position
        # "BP = E·L/(L+1) = 7,735.3725... -> 7,735.50 after rounding to the 0.5 tick".
        assert pos.bankruptcy_price == 773_550
        assert pos.liquidation_price % 50 == 0
        pos = query.GetPosition(query_pb2.GetPositionRequest(account=3, market=fee)).position
        assert pos.bankruptcy_price == 5_100_000
        # Taken over at 56,100: the surplus is 510, the fund keeps 0.5 % of 5,610 = 28.05.
        assert asyncio.run(go([MarkPrice(fee, 5_610_000, t + 1_000)], "gw-crash")).rejections == []
        fund = query.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT")).fund
        # (What it then puts up as the backstop's margin is still the fund's.)
        assert fund.total_inflow == fund.balance + fund.backstop_margin == 28_050_000
        account = query.GetAccount(query_pb2.GetAccountRequest(account=3, asset="USDT"))
        assert account.wallet_balance == 100 * USDT + 481_950_000
        assert list(account.positions) == []
    finally:
        assert d.stop() == 0, d.log.read_text()
