"""Funding payments: zero-sum within a market, the rounding residue booked.

Payers pay ``ceil(notional × |rate|)`` (a debit rounds up), capped at their
isolated margin so no balance goes negative; the pot is shared among receivers
pro rata to size (at one mark, notional is proportional to size for both
contract types), each share rounded down; what rounding leaves goes to the
market's fee pool.  Funding never touches the insurance fund.
"""

from __future__ import annotations

from collections.abc import Sequence

from riskd.core.market import MarketSpec
from riskd.core.position import Position
from riskd.core.units import FUNDING_SCALE, ceil_div

__all__ = ["funding_transfers"]


def funding_transfers(
    spec: MarketSpec, positions: Sequence[Position], mark: int, rate_e8: int
) -> tuple[dict[int, int], int]:
    """Margin change per account and the residue for the fee pool."""
    if rate_e8 == 0:
        return {}, 0
    longs_pay = rate_e8 > 0
    rate = abs(rate_e8)
    deltas: dict[int, int] = {}
    pot = 0
    receivers: list[Position] = []
    for pos in positions:
        if pos.size == 0:
            continue
        if (pos.size > 0) == longs_pay:
            num, den = spec.notional(pos.size, mark)
            due = min(ceil_div(num * rate, den * FUNDING_SCALE), max(pos.margin, 0))
            if due:
                deltas[pos.account] = -due
                pot += due
        else:
            receivers.append(pos)
    total = sum(abs(p.size) for p in receivers)
    paid_out = 0
    for pos in receivers:
        share = pot * abs(pos.size) // total
        if share:
            deltas[pos.account] = share
            paid_out += share
    return deltas, pot - paid_out
