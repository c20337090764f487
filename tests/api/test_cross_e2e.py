"""Cross margin through the daemon: the actors, gRPC, journal, restart and audit.

One real ``riskd serve`` (default config) is fed a cross scenario over two
USDT markets; its digest must equal the pure engine's for the same inputs,
before and after a restart, and ``riskd audit`` must agree.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from riskd import config as config_mod
from riskd.audit import audit
from riskd.core import Engine, cross_margin
from riskd.core.events import (
    Deposit,
    Fill,
    Input,
    MarginTransfer,
    MarkPrice,
    SetMarginMode,
    SettleMarket,
    Withdrawal,
)
from riskd.core.invariants import digest
from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    types_pb2,
    withdrawal_pb2,
    withdrawal_pb2_grpc,
)

from .conftest import Daemon, start_daemon
from .scenario import USDT, run_engine, stamp
from .test_daemon_e2e import events, metric, scrape
from .test_durability import stream_all

B, E = "BTC-USDT", "ETH-USDT"


def cross_scenario() -> list[Input]:
    """Account 1: cross in both markets with 1,000 USDT, long 0.1 BTC and 1 ETH;
    safe per market, called (account level) then liquidatable in total after a fall
    in both.  Account 3:
    cross, long 0.1 BTC with 2,000 USDT, survives.  Account 2: the isolated maker."""
    t = stamp()
    return [
        Deposit(1, "USDT", 1_000 * USDT, t),
        Deposit(2, "USDT", 100_000 * USDT, t),
        Deposit(3, "USDT", 2_000 * USDT, t),
        SetMarginMode(B, 1, True, t),
        SetMarginMode(E, 1, True, t),
        SetMarginMode(B, 3, True, t),
        MarginTransfer(2, B, 40_000 * USDT, t),
        MarginTransfer(2, E, 40_000 * USDT, t),
        MarkPrice(B, 5_000_000, t),
        MarkPrice(E, 300_000, t),
        Fill(B, 1, 1, 2, 5_000_000, 100, 1 * USDT, 1 * USDT, t),  # 0.1 BTC at 50,000
        Fill(E, 1, 1, 2, 300_000, 1_000, 1 * USDT, 1 * USDT, t),  # 1 ETH at 3,000
        Fill(B, 2, 3, 2, 5_000_000, 100, 0, 0, t),
        # −250 and −150: equity 598 > MM; each fall alone would be covered.
        MarkPrice(B, 4_750_000, t + 1_000),
        MarkPrice(E, 285_000, t + 1_000),
        # −600 and −300: equity 98 > MM, but a 2 % fall of both would not be: a margin call.
        MarkPrice(B, 4_400_000, t + 1_500),
        MarkPrice(E, 270_000, t + 1_500),
        # −700 and −300: equity −2 ≤ MM: both closed at once, the fund covers 2.
        MarkPrice(B, 4_300_000, t + 2_000),
        MarkPrice(E, 270_000, t + 2_000),
    ]


def _digest(d: Daemon) -> admin_pb2.CheckStateResponse:
    return admin_pb2_grpc.AdminServiceStub(d.channel()).CheckState(admin_pb2.CheckStateRequest())


def test_cross_margin_through_the_daemon(tmp_path: Path) -> None:
    inputs = cross_scenario()
    engine = run_engine(inputs, Engine(config_mod.load().markets, config_mod.load().funds))
    assert engine.markets[B].positions.get(1) is None  # account 1 was liquidated
    assert engine.markets[B].positions[3].size == 100  # account 3 survived
    d = start_daemon(tmp_path)
    try:
        asyncio.run(stream_all(d, inputs, "gw-cross"))
        state = _digest(d)
        assert list(state.violations) == []
        assert state.digest == digest(engine)

        # Account 1's liquidation was published (once) and counted, no account in labels.
        notices = [e.account_liquidation for e in events(d) if e.HasField("account_liquidation")]
        assert [(n.account, n.policy, list(n.markets)) for n in notices] == [
            (1, "bankrupt", [B, E])
        ]
        # Called once before, at account level, in the market of its largest MM.
        calls = [e.margin_call for e in events(d) if e.HasField("margin_call")]
        assert [(c.market, c.account) for c in calls] == [(B, 1)]
        assert 0 < calls[0].maintenance_margin < calls[0].margin_balance == 98 * USDT
        scraped = scrape(d)
        assert (
            metric(scraped, "riskd_cross_liquidations_total", asset="USDT", reason="bankrupt") == 1
        )

        # The account view: the same numbers as the pure engine's.
        query = query_pb2_grpc.QueryServiceStub(d.channel())
        got = query.GetAccount(query_pb2.GetAccountRequest(account=3, asset="USDT"))
        legs = [leg for _, leg in engine.cross_legs("USDT", 3)]
        want = cross_margin.account_view(3, "USDT", legs, engine.wallets["USDT"].balance(3), [5])
        assert got.cross.wallet == want.wallet == 2_000 * USDT
        assert got.cross.equity == want.equity == 1_300 * USDT
        assert got.cross.maintenance_margin == want.maintenance_margin
        assert got.cross.available == want.available
        assert got.cross.margin_ratio_ppm == want.margin_ratio_ppm
        [p] = got.cross.positions
        assert p.market == B and p.size == 100
        assert p.estimated_liquidation_price == want.positions[0].estimated_liquidation_price > 0
        assert 1 <= p.adl_quintile <= 5
        [pos] = got.positions
        assert pos.margin_mode == types_pb2.MARGIN_MODE_CROSS
        assert pos.liquidation_price == p.estimated_liquidation_price
        # GetPosition shows the same estimate and ADL quintile as GetAccount's entry.
        one = query.GetPosition(query_pb2.GetPositionRequest(account=3, market=B)).position
        assert one.margin_mode == types_pb2.MARGIN_MODE_CROSS
        assert (one.liquidation_price, one.adl_quintile) == (
            p.estimated_liquidation_price,
            p.adl_quintile,
        )

        # A withdrawal beyond what is available is refused; one within it is paid,
        # out of the cross wallet (its bands re-drawn), exactly as the engine does.
        stub = withdrawal_pb2_grpc.WithdrawalServiceStub(d.channel())
        over = stub.Withdraw(
            withdrawal_pb2.WithdrawRequest(
                withdrawal_id=1, account=3, asset="USDT", amount=want.available + 1
            )
        )
        assert not over.approved
        ok = stub.Withdraw(
            withdrawal_pb2.WithdrawRequest(
                withdrawal_id=2, account=3, asset="USDT", amount=want.available
            )
        )
        assert ok.approved
        run_engine([Withdrawal(3, "USDT", want.available)], engine)
        assert _digest(d).digest == digest(engine)
    finally:
        assert d.stop() == 0

    # Journal replay (and its snapshot) rebuild the same state; audit agrees.
    again = start_daemon(tmp_path)
    try:
        assert _digest(again).digest == digest(engine)
    finally:
        assert again.stop() == 0
    ok_, lines = audit(config_mod.load(), tmp_path / "data")
    assert ok_, "\n".join(lines)
    assert lines[-1].split()[-1] == digest(engine)


def test_domain_cross_example_through_the_daemon(tmp_path: Path) -> None:
    """DOMAIN.md "Cross, one position" on ETH-USDT set to one 100x / 0.5 % tier: 2
    long @ 10,000 with 2,200 in the wallet: IM 200, MM 100, available 2,000; the
    estimated liquidation price 8,944.72 (MM at the mark; the example's 8,950
    holds it at the entry's 100); a mark there liquidates the account."""
    t = stamp()
    d = start_daemon(tmp_path)
    try:
        admin_pb2_grpc.AdminServiceStub(d.channel()).UpdateMarket(
            admin_pb2.UpdateMarketRequest(
                market=types_pb2.Market(
                    symbol=E,
                    tiers=[
                        types_pb2.RiskTier(
                            notional_floor=0, max_leverage=100, maintenance_margin_rate_ppm=5_000
                        )
                    ],
                )
            )
        )
        setup = [
            Deposit(1, "USDT", 2_200 * USDT, t),
            Deposit(2, "USDT", 100_000 * USDT, t),
            SetMarginMode(E, 1, True, t),
            MarginTransfer(2, E, 50_000 * USDT, t),
            MarkPrice(E, 1_000_000, t),
            Fill(E, 1, 1, 2, 1_000_000, 2_000, 0, 0, t),
            MarkPrice(E, 895_000, t + 1),  # 8,950.00: not yet
        ]
        asyncio.run(stream_all(d, setup, "gw-domain"))
        query = query_pb2_grpc.QueryServiceStub(d.channel())
        got = query.GetAccount(query_pb2.GetAccountRequest(account=1, asset="USDT")).cross
        assert (got.wallet, got.initial_margin) == (2_200 * USDT, 179 * USDT)  # IM at the mark
        [p] = got.positions
        assert p.estimated_liquidation_price == 894_472  # 8,944.72 (tick 0.01)
        assert got.equity == 2_200 * USDT - 2 * 1_050 * USDT
        asyncio.run(stream_all(d, [MarkPrice(E, 894_472, t + 2)], "gw-domain-2"))
        gone = query.GetAccount(query_pb2.GetAccountRequest(account=1, asset="USDT"))
        assert list(gone.positions) == [] and not gone.cross.positions
        notices = [e.account_liquidation for e in events(d) if e.HasField("account_liquidation")]
        assert [(n.account, list(n.markets)) for n in notices] == [(1, [E])]
    finally:
        assert d.stop() == 0


def settlement_scenario() -> list[Input]:
    """BTC-USDT at 50,000 with three cross accounts: 1 long 0.1 BTC and 1 ETH
    (1,000 USDT), 3 short 0.1 BTC (2,000), 4 long 0.1 BTC with only 100; 2 is the
    isolated maker.  ETH then rises 200 for account 1."""
    t = stamp()
    return [
        Deposit(1, "USDT", 1_000 * USDT, t),
        Deposit(2, "USDT", 100_000 * USDT, t),
        Deposit(3, "USDT", 2_000 * USDT, t),
        Deposit(4, "USDT", 100 * USDT, t),
        SetMarginMode(B, 1, True, t),
        SetMarginMode(E, 1, True, t),
        SetMarginMode(B, 3, True, t),
        SetMarginMode(B, 4, True, t),
        MarginTransfer(2, B, 40_000 * USDT, t),
        MarginTransfer(2, E, 40_000 * USDT, t),
        MarkPrice(B, 5_000_000, t),
        MarkPrice(E, 300_000, t),
        Fill(B, 1, 1, 2, 5_000_000, 100, 0, 0, t),
        Fill(E, 1, 1, 2, 300_000, 1_000, 0, 0, t),
        Fill(B, 2, 4, 2, 5_000_000, 100, 0, 0, t),
        Fill(B, 3, 2, 3, 5_000_000, 100, 0, 0, t),
        MarkPrice(E, 320_000, t + 1_000),
    ]


def test_settling_a_market_with_cross_positions_through_the_daemon(tmp_path: Path) -> None:
    """SettleMarket at 47,000 over gRPC: 1's BTC loss (300) is paid by its cross
    wallet, 4 (100 against a 300 loss) is bankrupt and its 200 is taken from the
    winners (3, cross, and 2, isolated: 100 each), never the fund.  The daemon's
    digest equals the pure Engine's, after a crash (journal replay), after a clean
    restart (snapshot), and in ``riskd audit``."""
    inputs = settlement_scenario()
    engine = run_engine(inputs, Engine(config_mod.load().markets, config_mod.load().funds))
    assert {a: p.size for a, p in engine.markets[B].positions.items() if a != 2} == {
        1: 100,
        3: -100,
        4: 100,
    }
    d = start_daemon(tmp_path)
    admin = admin_pb2_grpc.AdminServiceStub(d.channel())
    query = query_pb2_grpc.QueryServiceStub(d.channel())
    fund = query.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT")).fund.balance
    try:
        asyncio.run(stream_all(d, inputs, "gw-settle"))
        assert _digest(d).digest == digest(engine)
        got = admin.SettleMarket(admin_pb2.SettleMarketRequest(market=B, price=4_700_000))
        assert got.positions == 4
        [settled] = [e for e in events(d) if e.HasField("market_settled")]
        s = settled.market_settled
        assert (s.positions, s.cross_positions) == (4, 3)
        assert (s.deficit, s.haircut) == (200 * USDT, 200 * USDT)
        # The pure engine, the same settlement (stamped as the daemon stamped it).
        run_engine([SettleMarket(B, 4_700_000, settled.timestamp_ms)], engine)
        state = _digest(d)
        assert list(state.violations) == [] and state.digest == digest(engine)
        wallets = {
            a: query.GetAccount(query_pb2.GetAccountRequest(account=a, asset="USDT"))
            for a in (1, 3, 4)
        }
        assert wallets[4].wallet_balance == 0 and not wallets[4].cross.positions
        assert wallets[3].wallet_balance == 2_200 * USDT  # +300 less its 100 share
        assert wallets[1].cross.equity == (1_000 - 300 + 200) * USDT
        assert [p.market for p in wallets[1].cross.positions] == [E]
        after = query.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT"))
        assert after.fund.balance == fund
    finally:
        d.process.send_signal(signal.SIGKILL)  # no snapshot: the journal alone
        d.process.wait(10)

    again = start_daemon(tmp_path)
    try:
        assert _digest(again).digest == digest(engine)
    finally:
        assert again.stop() == 0  # a clean stop: a snapshot
    again = start_daemon(tmp_path)
    try:
        assert _digest(again).digest == digest(engine)
    finally:
        assert again.stop() == 0
    ok_, lines = audit(config_mod.load(), tmp_path / "data")
    assert ok_, "\n".join(lines)
    assert lines[-1].split()[-1] == digest(engine)
