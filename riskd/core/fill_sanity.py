"""Fill sanity: what an ordinary fill must satisfy so no gateway can pay itself from the fund.

A gateway reports fills; riskd cannot see the book.  Without these checks a
pair of colluding accounts could trade at any price: one side left bankrupt
at the mark is liquidated, the fund pays its shortfall and the other side
keeps the difference (issue 11).  With ``fill_price_band_ppm > 0`` a fill
(not a liquidation fill: that one is bounded by its order's worst price) is
refused unless:

1. the market has a mark price (before the first mark nothing can be
   checked, and a fill at any price would become a shortfall when it comes);
2. its price is within the band of the mark:
   ``|price - mark| * 1e6 <= band * mark``;
3. neither side is left liquidatable at the mark (margin balance at or
   below maintenance; the backstop: at or below zero), which is what the
   fill would otherwise trigger at once;
4. a fill with the fund's backstop account is at the mark or better for the
   backstop, so disposing of the fund's inventory never pays a counterparty
   out of the fund.

Rule 3 is what protects the fund: after every fill both sides can absorb a
move of the mark by the smallest maintenance rate, so only a gap of the mark
(a market move, not a price the gateway chose) can leave a shortfall.  The
band (2) keeps fills plausible for everything priced from them.

Pure and exact: integer comparisons only.
"""

from __future__ import annotations

from riskd.core.errors import Rejected
from riskd.core.market import MarketSpec
from riskd.core.position import BACKSTOP_ACCOUNT
from riskd.core.units import PPM, magnitude

__all__ = ["check_price", "check_side"]


def check_price(spec: MarketSpec, mark: int | None, price: int, buyer: int, seller: int) -> None:
    """Rules 1, 2 and 4: refuse a fill price (FAILED_PRECONDITION on ``price``)."""
    band = spec.fill_price_band_ppm
    if not band:
        return
    if mark is None:
        raise Rejected.precondition(
            "price",
            f"{spec.symbol} has no mark price yet: fills are checked against the mark"
            f" (fill_price_band_ppm {band})",
        )
    if magnitude(price - mark) * PPM > band * mark:  # compiled, abs() boxes: magnitude is native
        raise Rejected.precondition(
            "price",
            f"{price} is outside the fill price band of {spec.symbol}: more than"
            f" {band} ppm from the mark {mark} (allowed {_low(mark, band)}..{_high(mark, band)})",
        )
    if buyer == BACKSTOP_ACCOUNT and price > mark:
        raise Rejected.precondition(
            "price", f"{price}: the backstop buys at the mark {mark} or below, never above"
        )
    if seller == BACKSTOP_ACCOUNT and price < mark:
        raise Rejected.precondition(
            "price", f"{price}: the backstop sells at the mark {mark} or above, never below"
        )


def check_side(
    spec: MarketSpec, mark: int | None, account: int, size: int, threshold: int, field: str
) -> None:
    """Rule 3: refuse a side left liquidatable at the mark (FAILED_PRECONDITION on ``field``).

    ``size`` is the side's planned size and ``threshold`` the one it would be
    indexed at (:meth:`LiquidationMachine.threshold_for` its planned numbers:
    the liquidation price, the bankruptcy price for the backstop).  Those are
    the exact integer prices where ``B <= MM`` (``B <= 0``) starts to hold
    (:mod:`riskd.core.margin`), so comparing the mark with the threshold the
    fill indexes the side at anyway is the predicate itself, on native ints.
    A flat side is always fine.
    """
    if not spec.fill_price_band_ppm or mark is None or not size:
        return
    if (mark > threshold) if size > 0 else (mark < threshold):
        return
    if account == BACKSTOP_ACCOUNT:
        raise Rejected.precondition(
            field, f"the backstop would be bankrupt at the mark {mark} after this fill"
        )
    raise Rejected.precondition(
        field,
        f"account {account} would be at or below its maintenance margin at the mark"
        f" {mark} after this fill, so it would be liquidated at once; add margin or trade"
        " nearer the mark",
    )


def _low(mark: int, band: int) -> int:
    return -((-(mark * (PPM - band))) // PPM)


def _high(mark: int, band: int) -> int:
    return mark * (PPM + band) // PPM
