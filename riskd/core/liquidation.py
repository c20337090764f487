"""A liquidation in progress and the prices and fees it settles at.

Waterfall (DOMAIN.md §2): closing a position at price F leaves the trader
``R = M + PnL(F)``.  If ``R >= 0`` the fund takes ``min(R, fee_cap × notional)``
(the clawback; fee cap 100 % by default) and the trader keeps the rest.  If
``R < 0`` the shortfall ``-R`` is asked of the fund; if the fund refuses, the
position is instead closed against ranked opposite positions at its
bankruptcy price (ADL), where ``R`` is zero up to tick rounding.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from riskd.core.margin import bankruptcy_threshold
from riskd.core.market import MarketSpec
from riskd.core.position import Position
from riskd.core.units import INT64_MAX, PPM, ceil_div

__all__ = [
    "Stage",
    "Liquidation",
    "close_result",
    "takeover_result",
    "execution_price",
    "liquidation_fee",
]


class Stage(enum.Enum):
    AWAITING_FUND = "awaiting_fund"  # a claim is with the fund
    WORKING = "working"  # book mode: the order is in the book
    AWAITING_ADL = "awaiting_adl"  # the fund refused; waiting for counterparties


@dataclass(slots=True)
class Liquidation:
    id: int
    account: int
    takeover: bool
    price: int  # mark at the trigger: the takeover price
    quantity: int  # |size| at the trigger
    ts: int
    stage: Stage = Stage.AWAITING_FUND
    reserved: int = 0
    worst_price: int = 0
    filled: int = 0
    filled_notional: int = 0
    fee: int = 0
    shortfall: int = 0


def close_result(spec: MarketSpec, pos: Position, price: int) -> tuple[int, int]:
    """``(trade value, R)`` if the whole position closed at ``price`` now."""
    value = spec.trade_value(-pos.size, price)
    return value, pos.margin - value - pos.basis


def takeover_result(spec: MarketSpec, pos: Position, qty: int, price: int) -> tuple[int, int]:
    """``(backstop's trade value, R)`` if the backstop took ``qty`` (signed, the
    position's side) at ``price``.

    The value is rounded for the backstop (flooring one's own value never loses
    a unit), so the fund's inventory cannot go negative through rounding; the
    trader's side takes the unit, and ``R`` already includes it.
    """
    value = spec.trade_value(qty, price)
    trial = Position(pos.account)
    trial.size, trial.basis, trial.margin = pos.size, pos.basis, pos.margin
    return value, trial.margin + trial.trade(-qty, -value)


def execution_price(spec: MarketSpec, pos: Position, extra_margin: int = 0) -> int:
    """The bankruptcy price on the tick, rounded against the trader.

    The worst tick price at which closing the whole position leaves margin
    (plus ``extra_margin``) >= 0, so ADL at this price never creates a
    shortfall; tick rounding leaves the trader a small surplus instead.
    """
    tick = spec.tick_size
    top = (INT64_MAX // tick) * tick
    t = bankruptcy_threshold(spec, pos, extra_margin)
    long = pos.size > 0
    price = ceil_div(t, tick) * tick if long else (t // tick) * tick
    price = min(max(price, tick), top)
    step = tick if long else -tick

    def solvent(p: int) -> bool:
        return close_result(spec, pos, p)[1] + extra_margin >= 0

    while not solvent(price) and tick <= price + step <= top:
        price += step
    # The threshold is exact, but trade values round down: a few ticks worse
    # may still leave exactly 0 (inverse markets).  Solvency only grows with
    # a better price, so gallop, then bisect, to the worst solvent tick.
    if solvent(price):
        good, jump = price, 1
        while tick <= good - jump * step <= top and solvent(good - jump * step):
            good -= jump * step
            jump *= 2
        while jump > 1:
            jump //= 2
            if tick <= good - jump * step <= top and solvent(good - jump * step):
                good -= jump * step
        price = good
    return price


def liquidation_fee(spec: MarketSpec, remaining: int, notional: int) -> int:
    """The fund's take from a surplus: all of it up to ``fee_cap × notional``."""
    if remaining <= 0:
        return 0
    return min(remaining, ceil_div(notional * spec.liquidation_fee_cap_ppm, PPM))
