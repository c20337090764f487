"""Final settlement of a market: every position closed at one price, the market delisted.

A delisted contract (a venue retiring a market, an expiry) ends with every
position closed at the settlement price ``P`` the operator names:

1. each position is closed at ``P`` as a trade would close it: its value
   rounds against it (:meth:`~riskd.core.market.MarketSpec.side_value`) and
   the residue of all of them goes to the market's fee pool, as a fill's does;
2. a position whose margin does not cover its loss at ``P`` (bankrupt there)
   ends at zero; its deficit is taken from the winners' profits pro rata to
   their profit, each share rounded up (against the trader), what that
   rounds over the deficit going to the fee pool.  The insurance fund is not
   touched: no claim, no ADL (its backstop's inventory is closed like any
   position and its margin goes back to the fund, as when it closes in the
   book).  If the profits cannot cover the deficit (only possible by the
   rounding residue of step 1, at most one quantum per position), the fee
   pool pays the rest out of that residue;
3. every margin left is credited to its owner's wallet (``WalletCredit``,
   cause ``settlement``), the positions are gone, and the market is SETTLED:
   it refuses every input and queries no longer list it.

Settlement is refused while a liquidation is in progress (its fund claim or
reservation would be left dangling): halt the market, let liquidations
finish, then settle.  It is refused too while a cross-margin position is
open there (``docs/engine.md``, "Market lifecycle", says why): close-only
first, let them close, then settle.  Conservation holds to the unit: what left the
positions is exactly what reached wallets, the fund (backstop margin) and
the fee pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from riskd.core.errors import Rejected
from riskd.core.events import MarketSettled, MarketStatusChanged, WalletCredit
from riskd.core.market_status import MarketStatus
from riskd.core.units import INT64_MAX, ceil_div

if TYPE_CHECKING:
    from riskd.core.market_engine import MarketEngine

__all__ = ["settle", "haircuts"]


def haircuts(profits: list[int], deficit: int) -> list[int]:
    """Each winner's share of ``deficit``, pro rata to its profit, rounded up.

    Never more than a winner's profit; the shares sum to at least
    ``min(deficit, sum(profits))`` (the rounding goes to the fee pool).
    """
    total = sum(profits)
    if not deficit or not total:
        return [0] * len(profits)
    if deficit >= total:
        return list(profits)
    return [min(p, ceil_div(deficit * p, total)) for p in profits]


def settle(m: MarketEngine, price: int, ts: int) -> None:
    """Close every position of ``m`` at ``price`` and delist it (see the module docstring)."""
    if m.status is MarketStatus.SETTLED:
        raise Rejected.precondition("market", f"{m.symbol} is already settled")
    why = m.spec.check_price(price)
    if why:
        raise Rejected.invalid("price", why)
    if m.liquidations:
        first = min(m.liquidations)
        raise Rejected.precondition(
            "market",
            f"{m.symbol} has {len(m.liquidations)} liquidation(s) in progress (first: {first});"
            " settle once they have finished",
        )
    cross = sorted(a for a in m.cross if a in m.positions)
    if cross:
        # A cross position's margin is a band of its account's wallet (possibly
        # negative): its loss at the price may need the account's other collateral,
        # in the wallet and the asset's other markets, which one market's settlement
        # cannot reach atomically.  Refused rather than booked as a deficit.
        raise Rejected.precondition(
            "market",
            f"{m.symbol} has {len(cross)} cross-margin position(s) open (first: account"
            f" {cross[0]}); only isolated positions are settled: put the market in"
            " close_only, let the gateway close the cross positions, then settle",
        )
    spec = m.spec
    positions = sorted(m.positions.values(), key=lambda p: p.account)
    # Planned in full before anything changes: a refusal leaves the market as it was.
    after: list[int] = []  # each position's margin after its close, before haircuts
    residue = 0
    for pos in positions:
        value = spec.side_value(-pos.size, price) if pos.size else 0
        residue += value
        realised = -value - pos.basis
        margin = pos.margin + realised
        if abs(margin) > INT64_MAX:
            raise Rejected.invalid("price", f"settling account {pos.account} overflows int64")
        after.append(margin)
    deficit = sum(-x for x in after if x < 0)
    winners = [i for i, x in enumerate(after) if x > 0 and positions[i].size]
    profits = [max(0, after[i] - positions[i].margin) for i in winners]
    cuts = haircuts(profits, deficit)
    covered = sum(cuts)
    # Rounding of the closes (>= 0) and of the haircuts (>= 0) go to the fee pool;
    # a deficit the profits could not cover comes out of it.
    m.fee_pool += residue + covered - deficit
    if m.fee_pool < 0:
        raise AssertionError(f"{m.symbol}: settlement left the fee pool at {m.fee_pool}")
    for i, cut in zip(winners, cuts, strict=True):
        after[i] -= cut
    paid_out = 0
    for pos, margin in zip(positions, after, strict=True):
        m._set(pos, 0, 0, 0)  # the one way a position's numbers change (index, open interest)
        left = max(margin, 0)
        if left:
            if pos.is_backstop:
                m.sweep_backstop_margin(left, ts)
            else:
                paid_out += left
                m.effects.append(
                    WalletCredit(
                        account=pos.account, asset=m.asset, amount=left, cause="settlement"
                    )
                )
    m.positions.clear()
    previous, m.status = m.status, MarketStatus.SETTLED
    m.effects.append(
        MarketStatusChanged(market=m.symbol, status=m.status.value, previous=previous.value, ts=ts)
    )
    m.effects.append(
        MarketSettled(
            market=m.symbol,
            asset=m.asset,
            price=price,
            positions=len(positions),
            paid_out=paid_out,
            fee_pool=m.fee_pool,
            ts=ts,
        )
    )
