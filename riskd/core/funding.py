"""Funding payments: zero-sum within a market, the rounding residue booked.

Payers pay ``ceil(notional × |rate|)`` (a debit rounds up), capped at their
isolated margin so no balance goes negative, and at their margin balance at
the mark (margin + unrealised PnL, rounded down) so no payment leaves a
position bankrupt: a funding rate, which a gateway reports, can push a
position into liquidation but never make the insurance fund pay for it
(issue 11).  For the same reason the fund's backstop account neither pays nor
receives funding: its inventory is the fund's money.  The pot is shared among receivers
pro rata to size (at one mark, notional is proportional to size for both
contract types), each share rounded down; what rounding leaves goes to the
market's fee pool.  Funding never touches the insurance fund.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from riskd.core.margin import margin_balance
from riskd.core.market import MarketSpec
from riskd.core.position import Position
from riskd.core.units import FUNDING_SCALE, ceil_div

__all__ = ["funding_transfers"]


def funding_transfers(
    spec: MarketSpec,
    positions: Sequence[Position],
    mark: int,
    rate_e8: int,
    cross: Collection[int] = (),
) -> tuple[dict[int, int], int]:
    """Margin change per account and the residue for the fee pool.

    A cross position (account in ``cross``) pays from its margin balance only:
    its margin is a share of the account's wallet and may be negative.
    """
    if rate_e8 == 0:
        return {}, 0
    longs_pay = rate_e8 > 0
    rate = abs(rate_e8)
    deltas: dict[int, int] = {}
    pot = 0
    receivers: list[Position] = []
    for pos in positions:
        if pos.size == 0 or pos.is_backstop:
            continue
        if (pos.size > 0) == longs_pay:
            num, den = spec.notional(pos.size, mark)
            solvent = margin_balance(spec, pos, mark)
            if pos.account not in cross:
                solvent = min(pos.margin, solvent)
            due = min(ceil_div(num * rate, den * FUNDING_SCALE), max(solvent, 0))
            if due:
                deltas[pos.account] = -due
                pot += due
        else:
            receivers.append(pos)
    if not receivers:  # the other side is all the backstop's: nobody to pay
        return {}, 0
    total = sum(abs(p.size) for p in receivers)
    paid_out = 0
    for pos in receivers:
        share = pot * abs(pos.size) // total
        if share:
            deltas[pos.account] = share
            paid_out += share
    return deltas, pot - paid_out
