"""Drive the same inputs into the daemon (over gRPC) and into the pure engine."""

from __future__ import annotations

import contextlib
import time

from riskd.core import Engine, Rejected
from riskd.core.events import (
    Deposit,
    Fill,
    FundingRate,
    Input,
    LiquidationDone,
    LiquidationFill,
    MarginTransfer,
    MarkPrice,
    SetMarginMode,
)
from riskd_client.gateway import Gateway

USDT = 10**6


def send(gw: Gateway, x: Input) -> int:
    """Queue one core input on a gateway as its wire update."""
    match x:
        case Fill():
            return gw.fill(
                x.market,
                x.buyer,
                x.seller,
                x.price,
                x.quantity,
                trade_id=x.trade_id,
                buyer_fee=x.buyer_fee,
                seller_fee=x.seller_fee,
                ts=x.ts,
            )
        case MarkPrice():
            return gw.mark_price(x.market, x.price, ts=x.ts)
        case Deposit():
            return gw.deposit(x.account, x.asset, x.amount, ts=x.ts)
        case MarginTransfer():
            return gw.margin_transfer(x.account, x.market, x.amount, ts=x.ts)
        case FundingRate():
            return gw.funding_rate(x.market, x.rate_e8, ts=x.ts)
        case LiquidationFill():
            return gw.liquidation_fill(
                x.market,
                x.liquidation_id,
                x.counterparty,
                x.price,
                x.quantity,
                counterparty_fee=x.counterparty_fee,
                ts=x.ts,
            )
        case LiquidationDone():
            return gw.liquidation_done(x.market, x.liquidation_id, ts=x.ts)
        case SetMarginMode():
            return gw.margin_mode(x.market, x.account, x.cross, ts=x.ts)
    raise TypeError(x)


def stamp() -> int:
    """An hour ago on a whole minute: inside riskd's default clock-skew window."""
    return (time.time_ns() // 1_000_000 - 3_600_000) // 60_000 * 60_000


def crash_scenario() -> list[Input]:
    """Two longs on BTC-USDT (default config): one liquidated with a surplus,
    one bankrupt in a crash the fund cannot cover, so shorts are deleveraged."""
    t = stamp()
    m = "BTC-USDT"
    return [
        *(Deposit(a, "USDT", 10_000 * USDT, t) for a in (1, 2, 3, 4)),
        MarginTransfer(1, m, 500 * USDT, t),
        MarginTransfer(2, m, 5_000 * USDT, t),
        MarginTransfer(3, m, 600 * USDT, t),
        MarginTransfer(4, m, 5_000 * USDT, t),
        MarkPrice(m, 5_000_000, t),
        Fill(m, 1, 1, 2, 5_000_000, 100, 1 * USDT, 1 * USDT, t),  # 0.1 BTC at 50,000
        Fill(m, 2, 3, 4, 5_000_000, 100, 1 * USDT, 1 * USDT, t),
        MarkPrice(m, 4_515_000, t + 1000),  # acct 1 crosses its LP (45,190.7): surplus
        MarkPrice(m, 3_500_000, t + 2000),  # 30 % crash: acct 3 bankrupt, fund too small
    ]


def run_engine(inputs: list[Input], engine: Engine) -> Engine:
    for x in inputs:
        with contextlib.suppress(Rejected):
            engine.apply(x)
    return engine
