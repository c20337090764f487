"""The pro_rata_risk ADL policy selected through the daemon and seen in its events."""

from __future__ import annotations

import asyncio

from riskd.config import default_toml, parse
from riskd.core import AdlPolicy
from riskd.core.events import Deposit, Fill, Input, MarginTransfer, MarkPrice
from riskd.v1 import admin_pb2, admin_pb2_grpc, query_pb2, query_pb2_grpc, types_pb2

from .conftest import Daemon
from .scenario import USDT, stamp
from .test_daemon_e2e import events, stream

M = "BTC-USDT"
SHORTS = (10, 11, 12, 13, 14)


def crash() -> list[Input]:
    """Long 1 (0.03 BTC @ 50,000, 300 USDT: bankrupt at 40,000) against five equal
    shorts of 0.02 at 1x; 99 longs the rest.  The mark falls to 35,000, the fund is
    empty: 0.03 BTC is deleveraged."""
    t = stamp()
    out: list[Input] = [Deposit(a, "USDT", 10_000 * USDT, t) for a in (1, 99, *SHORTS)]
    out += [MarginTransfer(1, M, 300 * USDT, t), MarginTransfer(99, M, 10_000 * USDT, t)]
    out += [MarginTransfer(a, M, 1_000 * USDT, t) for a in SHORTS]
    out.append(MarkPrice(M, 5_000_000, t))
    out += [Fill(M, 1, 1, 10, 5_000_000, 20, 0, 0, t), Fill(M, 2, 1, 11, 5_000_000, 10, 0, 0, t)]
    out += [Fill(M, 3, 99, 11, 5_000_000, 10, 0, 0, t)]
    out += [Fill(M, 4 + i, 99, a, 5_000_000, 20, 0, 0, t) for i, a in enumerate(SHORTS[2:])]
    out.append(MarkPrice(M, 3_500_000, t + 1_000))
    return out


def test_update_market_selects_pro_rata_risk_and_adl_shares_it_out(daemon: Daemon) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(daemon.channel())
    admin.UpdateMarket(
        admin_pb2.UpdateMarketRequest(
            market=types_pb2.Market(symbol=M, adl_policy=types_pb2.ADL_POLICY_PRO_RATA_RISK)
        )
    )
    query = query_pb2_grpc.QueryServiceStub(daemon.channel())
    markets = {m.symbol: m for m in query.ListMarkets(query_pb2.ListMarketsRequest()).markets}
    assert markets[M].adl_policy == types_pb2.ADL_POLICY_PRO_RATA_RISK
    gw = asyncio.run(stream(daemon, crash()))
    assert gw.rejections == []
    evs = events(daemon)
    notices = [e.adl_notice for e in evs if e.HasField("adl_notice")]
    [adl] = [e.adl_executed for e in evs if e.HasField("adl_executed")]
    # Five equal winners: 30 steps shared 6 each, nobody closed whole (a queue would
    # have closed 10 whole and half of 11).
    assert sorted((n.account, n.quantity) for n in notices) == [(a, 6) for a in SHORTS]
    assert adl.quantity == 30 and adl.counterparties == 5
    assert {n.price for n in notices} == {adl.price}
    for a in SHORTS:
        pos = query.GetPosition(query_pb2.GetPositionRequest(account=a, market=M)).position
        assert pos.size == -14
    state = admin.CheckState(admin_pb2.CheckStateRequest())
    assert list(state.violations) == []


def test_config_selects_pro_rata_risk() -> None:
    text = default_toml().replace('adl_policy = "pnl_leverage"', 'adl_policy = "pro_rata_risk"', 1)
    cfg = parse(text)
    by = {m.symbol: m.adl_policy for m in cfg.markets}
    assert by[M] is AdlPolicy.PRO_RATA_RISK
