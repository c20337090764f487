"""Final settlement of a market: every position closed at one price, the market delisted.

A delisted contract (a venue retiring a market, an expiry) ends with every
position closed at the settlement price ``P`` the operator names:

1. each position is closed at ``P`` as a trade would close it: its value
   rounds against it (:meth:`~riskd.core.market.MarketSpec.side_value`) and
   the residue of all of them goes to the market's fee pool, as a fill's does;
2. an isolated position whose margin does not cover its loss at ``P``
   (bankrupt there) ends at zero; a cross position's loss is its account's
   (:func:`cross_deficits`), which is bankrupt at ``P`` only if its whole
   cross wallet cannot pay it.  Every deficit is taken from the winners'
   profits (isolated and cross alike) pro rata to their profit, each share
   rounded up (against the trader), what that rounds over the deficit going
   to the fee pool.  The insurance fund is not touched: no claim, no ADL
   (its backstop's inventory is closed like any position and its margin
   goes back to the fund, as when it closes in the book).  If the profits
   cannot cover the deficits (only possible by the rounding residue of step
   1, at most one quantum per position), the fee pool pays the rest out of
   that residue;
3. every isolated margin left is credited to its owner's wallet
   (``WalletCredit``, cause ``settlement``); what is left of a cross band
   goes back to the account's cross wallet: credited the same way if
   positive, taken from it if negative (:func:`absorb`, by whoever routes
   the settlement: it may reach the account's other bands).  The positions
   are gone and the market is SETTLED: it refuses every input and queries
   no longer list it.  Each cross account is then re-checked as after any
   input (new bands, or an ordinary liquidation in its other markets).

Settlement is refused while a liquidation is in progress (its fund claim or
reservation would be left dangling), in the market or of a cross account
with a position in it, and while such an account has a position valued at
a guarded mark (its collateral is unknown): halt the market, let them
finish, then settle.  Conservation holds to the unit: what left the
positions is exactly what reached wallets, the fund (backstop margin) and
the fee pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from riskd.core.cross_margin import Leg, allocate, figures
from riskd.core.errors import Rejected
from riskd.core.events import MarketSettled, MarketStatusChanged, WalletCredit
from riskd.core.market_status import MarketStatus
from riskd.core.units import INT64_MAX, ceil_div

if TYPE_CHECKING:
    from riskd.core.market_engine import MarketEngine

__all__ = ["settle", "haircuts", "check", "cross_deficit", "cross_deficits", "absorb"]


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


def check(m: MarketEngine, price: int) -> None:
    """Whether ``m`` may be settled at ``price`` now (Rejected, naming the field, if not)."""
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


def cross_deficit(symbol: str, price: int, account: int, legs: Sequence[Leg], free: int) -> int:
    """What the cross account cannot pay of its loss in ``symbol`` at ``price``.

    ``legs``: all its cross positions in the asset, ``free`` its wallet's
    unallocated balance.  Its position there closes as a fill at ``price``
    would close it; its equity after is ``free`` + that band's margin after
    the close + its other positions' margin and unrealised PnL at their
    marks.  Negative: bankrupt at ``price``, and the deficit (taken from the
    market's winners) is what brings the equity back to 0, but never more
    than the position lost there beyond its band, nor more than it lost at
    all (a negative band is lent by the other positions, not by this
    market's winners).  What is left negative (the other positions beyond
    their own bands) is their markets' to liquidate, by the ordinary path.
    """
    here: Leg | None = None
    others: list[Leg] = []
    for leg in legs:
        if leg.market == symbol:
            here = leg
        elif leg.size:
            others.append(leg)
    for leg in others:
        if leg.liquidating:
            raise Rejected.precondition(
                "market",
                f"account {account}'s cross position in {leg.market} is being liquidated:"
                f" settle {symbol} once it has finished",
            )
        if leg.guarded:
            raise Rejected.precondition(
                "market",
                f"account {account}'s cross position in {leg.market} is valued at a guarded"
                f" mark: settle {symbol} once the mark is good (or the guard overridden)",
            )
    if here is None or not here.size:
        return 0
    realised = -here.spec.side_value(-here.size, price) - here.basis
    left = here.margin + realised
    if left >= 0 or realised >= 0:
        return 0
    equity = free + left + sum(leg.margin + figures(leg).unrealised for leg in others)
    return max(0, min(-equity, -left, -realised))


def cross_deficits(
    m: MarketEngine, price: int, accounts: Sequence[tuple[int, Sequence[Leg], int]]
) -> dict[int, int]:
    """Each cross account's :func:`cross_deficit` in ``m`` at ``price`` (those not 0);
    ``accounts``: ``(account, its cross legs in the asset, its free balance)`` of
    each cross account with a position in ``m``.  Checks the settlement first."""
    check(m, price)
    out: dict[int, int] = {}
    for account, legs, free in accounts:
        d = cross_deficit(m.symbol, price, account, legs, free)
        if d:
            out[account] = d
    return out


def absorb(legs: Sequence[Leg], free: int, amount: int) -> dict[str, int]:
    """The bands that let ``amount`` leave a cross account's wallet (what its
    settled band was left short): its free balance pays first, then its other
    positions' bands, spread anew over what is left (possibly below their
    needs: the re-check that follows liquidates the account then).  Empty if
    the free balance covers it; the caller then debits ``amount``."""
    if amount <= free:
        return {}
    legs = [leg for leg in legs if leg.size]
    if not legs:
        # cross_deficit brought such an account's equity back to 0 exactly.
        raise AssertionError(f"a cross wallet of {free} cannot pay {amount} and has no band")
    wallet = free + sum(leg.margin for leg in legs) - amount
    return allocate(legs, [figures(leg) for leg in legs], wallet)


def settle(
    m: MarketEngine, price: int, ts: int, deficits: Mapping[int, int] | None = None
) -> dict[int, int]:
    """Close every position of ``m`` at ``price`` and delist it (see the module
    docstring); ``deficits``: :func:`cross_deficits`, required when a cross
    position is open.  Returns what is left of each cross account's band
    (negative: what its wallet owes, :func:`absorb`); those accounts are due
    for their re-check."""
    check(m, price)
    cross = sorted(a for a in m.cross if a in m.positions)
    if cross and deficits is None:
        # Only a router that holds the accounts' wallets can settle them (Engine,
        # the sequencer): a market alone cannot.
        raise Rejected.precondition(
            "market",
            f"{m.symbol} has {len(cross)} cross-margin position(s) open (first: account"
            f" {cross[0]}): they settle with their accounts' wallets",
        )
    given = deficits or {}
    stray = sorted(a for a in given if a not in cross)
    if stray:
        raise AssertionError(f"{m.symbol}: deficits for accounts without a cross position {stray}")
    spec = m.spec
    positions = sorted(m.positions.values(), key=lambda p: p.account)
    # Planned in full before anything changes: a refusal leaves the market as it was.
    after: list[int] = []  # each position's margin after its close, before haircuts
    realised: list[int] = []
    residue = 0
    deficit = 0
    for pos in positions:
        value = spec.side_value(-pos.size, price) if pos.size else 0
        residue += value
        r = -value - pos.basis
        margin = pos.margin + r
        if abs(margin) > INT64_MAX:
            raise Rejected.invalid("price", f"settling account {pos.account} overflows int64")
        if pos.account in m.cross:
            d = given.get(pos.account, 0)
            deficit += d
            margin += d
        elif margin < 0:
            deficit -= margin
        after.append(margin)
        realised.append(r)
    # An isolated winner's margin is never negative, so a profit leaves it positive.
    winners = [i for i, r in enumerate(realised) if r > 0 and positions[i].size]
    cuts = haircuts([realised[i] for i in winners], deficit)
    covered = sum(cuts)
    # Rounding of the closes (>= 0) and of the haircuts (>= 0) go to the fee pool;
    # a deficit the profits could not cover comes out of it.
    m.fee_pool += residue + covered - deficit
    if m.fee_pool < 0:
        raise AssertionError(f"{m.symbol}: settlement left the fee pool at {m.fee_pool}")
    for i, cut in zip(winners, cuts, strict=True):
        after[i] -= cut
    paid_out = 0
    charged = 0
    left: dict[int, int] = {}
    for pos, margin in zip(positions, after, strict=True):
        m._set(pos, 0, 0, 0)  # the one way a position's numbers change (index, open interest)
        if pos.account in m.cross:
            left[pos.account] = margin
            m.cross_due.add(pos.account)
            charged += max(-margin, 0)
        elif margin < 0:
            continue
        if margin > 0:
            if pos.is_backstop:
                m.sweep_backstop_margin(margin, ts)
            else:
                paid_out += margin
                m.effects.append(
                    WalletCredit(
                        account=pos.account, asset=m.asset, amount=margin, cause="settlement"
                    )
                )
    m.positions.clear()
    m.cross_called.clear()
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
            cross_positions=len(cross),
            charged=charged,
            deficit=deficit,
            haircut=covered,
        )
    )
    return left
