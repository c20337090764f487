"""A liquidation in progress, the one loss waterfall, and the prices it settles at.

The waterfall (DOMAIN.md §2; BitMEX, dYdX), the same in takeover and book
mode: closing (part of) a position leaves the trader ``R = M + PnL``.

* ``R >= 0``: the fund takes ``min(R, fee_cap × notional)`` (the clawback;
  fee cap 100 % by default) and the trader keeps the rest.
* ``R < 0``: the fund pays ``min(-R, budget)``, its budget being the least of
  its free balance, the market's remaining loss cap and the drawdown guard's
  room (book mode: the slippage it reserved).  Only the uncovered rest goes to
  ADL: the position is closed against ranked opposite positions at its
  *fund-adjusted* bankruptcy price (the fund's payment counted as margin, on
  the tick, against the trader, never past the mark), where ``R`` + payment is
  zero up to tick rounding.  Nobody ends below zero.

:func:`waterfall` is that split; :func:`adl_price` the price.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from riskd.core.events import AdlReason
from riskd.core.margin import NEVER_LONG, NEVER_SHORT, bankruptcy_threshold
from riskd.core.market import MarketSpec
from riskd.core.pickling import FieldsPickled, SlotsPickled
from riskd.core.position import Position, traded
from riskd.core.units import INT64_MAX, PPM, ceil_div

__all__ = [
    "Stage",
    "Liquidation",
    "Waterfall",
    "waterfall",
    "adl_price",
    "bankruptcy_price",
    "close_result",
    "takeover_result",
    "execution_price",
    "liquidation_fee",
]


class Stage(enum.Enum):
    AWAITING_FUND = "awaiting_fund"  # a claim is with the fund
    WORKING = "working"  # book mode: the order is in the book
    AWAITING_ADL = "awaiting_adl"  # the rest is deleveraged; waiting for counterparties
    COOLING = "cooling"  # a partial step done, the rest frozen until ``until``
    SETTLED = "settled"  # over (settled, released or restarted): no longer kept

    # The transitions between these: riskd.core.liquidation_machine.TRANSITIONS.


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(slots=True, init=False)
class Liquidation(SlotsPickled):
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
    # Why the rest is (or will be) deleveraged; None while the fund may still pay.
    adl_reason: AdlReason | None = None
    # Shortfall the fund already put into the margin (a covered takeover the
    # bankrupt backstop could not accept), for the ADL event's accounting.
    paid_in: int = 0
    # Policy ``fraction``: when a cooling position's rest may go whole.
    until: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(
        self,
        id: int,
        account: int,
        takeover: bool,
        price: int,
        quantity: int,
        ts: int,
        stage: Stage = Stage.AWAITING_FUND,
        reserved: int = 0,
        worst_price: int = 0,
        filled: int = 0,
        filled_notional: int = 0,
        fee: int = 0,
        shortfall: int = 0,
        adl_reason: AdlReason | None = None,
        paid_in: int = 0,
        until: int = 0,
    ) -> None:
        self.id = id
        self.account = account
        self.takeover = takeover
        self.price = price
        self.quantity = quantity
        self.ts = ts
        self.stage = stage
        self.reserved = reserved
        self.worst_price = worst_price
        self.filled = filled
        self.filled_notional = filled_notional
        self.fee = fee
        self.shortfall = shortfall
        self.adl_reason = adl_reason
        self.paid_in = paid_in
        self.until = until


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class Waterfall(FieldsPickled):
    """How a closing's result ``R`` is split: every unit lands in one place."""

    fee: int  # surplus to the fund (the clawback)
    paid: int  # shortfall the fund pays
    uncovered: int  # shortfall left for ADL counterparties

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(self, fee: int, paid: int, uncovered: int) -> None:
        object.__setattr__(self, "fee", fee)
        object.__setattr__(self, "paid", paid)
        object.__setattr__(self, "uncovered", uncovered)


def waterfall(remaining: int, notional: int, fee_cap_ppm: int, available: int) -> Waterfall:
    """Split ``R = remaining``: fee from a surplus, else the fund up to ``available``."""
    if remaining >= 0:
        if remaining == 0:
            return Waterfall(0, 0, 0)
        return Waterfall(min(remaining, ceil_div(notional * fee_cap_ppm, PPM)), 0, 0)
    paid = min(-remaining, max(available, 0))
    return Waterfall(0, paid, -remaining - paid)


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
    realised = traded(pos.size, pos.basis, -qty, -value)[2]  # no trial Position
    return value, pos.margin + realised


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
    return waterfall(remaining, notional, spec.liquidation_fee_cap_ppm, 0).fee


def adl_price(spec: MarketSpec, pos: Position, mark: int, fund_paid: int = 0) -> int:
    """Where ADL closes ``pos``: its bankruptcy price with ``fund_paid`` as margin.

    On the tick, against the trader (so the close leaves margin + payment
    >= 0), and never past the mark: a position still solvent there closes at
    the mark, so counterparties never gain from ADL and the fund never pays more
    than the deficit at the mark.  A larger payment only moves the price towards
    the mark, i.e. in the counterparties' favour.
    """
    price = execution_price(spec, pos, fund_paid)
    return max(price, mark) if pos.size > 0 else min(price, mark)


def bankruptcy_price(spec: MarketSpec, pos: Position) -> int:
    """The bankruptcy price as queries show it: what ADL would execute at; 0 if none."""
    t = bankruptcy_threshold(spec, pos)
    if pos.size == 0 or (pos.size > 0 and t <= NEVER_LONG) or (pos.size < 0 and t >= NEVER_SHORT):
        return 0
    return execution_price(spec, pos)
