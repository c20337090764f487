"""Cross margin: an account's cross positions in one settlement asset share its wallet.

DOMAIN.md §1–2.  For an account and an asset, over its cross positions
(``legs``, one per market it trades in cross mode)::

    W  = wallet + Σ allocations          the cross wallet
    E  = W + Σ u_i                       equity (margin balance), u at each market's mark
    MM = Σ MM_i,  IM = Σ IM_i            requirements, tiers per position
    liquidatable  iff  E <= MM           (exact, as for an isolated position)
    available     =  W + min(Σ u_i, 0) − IM     (what may leave: never unrealised profit)

**Bands.**  The cross wallet is kept *allocated* across the account's
positions: each cross position's ``margin`` holds a share of it, so the
market indexes it by the price at which that share stops covering it, with
the same liquidation index as isolated positions.  Each share is at least
the position's need (the least integer margin that leaves it strictly above
maintenance at the mark) plus a part of the buffer ``E − MM`` pro rata to
MM.  While no position has crossed its own band, every ``m_i + u_i > MM_i``,
so ``E > MM``: the account is safe, and a quiet mark tick reads nothing but
the index (O(log n)).  A position that crosses its band, or a fill, funding
or a closed position that moved the account, puts the account on its
market's ``cross_due`` list; after the input, :func:`plan` recomputes the
account exactly and either re-allocates (new bands) or liquidates it.
A share may be negative (a position in profit lends its unrealised profit to
the others); the account's wallet is the sum and is what conservation counts.

**Liquidation** (the market's ``cross_liquidation`` policy of the position
with the largest MM decides): each position to close is given
``m_i = e_i − u_i`` where the ``e_i`` split the equity ``E`` (pro rata to MM,
so a bankrupt account's deficit is shared by the markets that carry the
risk), and is then liquidated whole by its market exactly as an isolated
position: the fund, the backstop or book, ADL, the waterfall.  ``all_at_once``
(Hyperliquid) closes every position; ``step_down`` (Binance, Bybit) closes the
largest MM first with ``e = min(E, MM_j)`` and re-checks the account once it
is done.  A bankrupt account (``E < 0``) always closes whole.  While one of
an account's cross positions is being liquidated, the account waits (no new
step, no withdrawal).

Everything here is pure arithmetic on :class:`Leg` values: the reference
:class:`~riskd.core.Engine` and the daemon's sequencer gather the legs from
the markets that own the positions and apply the same :class:`Plan`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from math import lcm

from riskd.core.errors import Rejected
from riskd.core.events import AccountLiquidation, MarginCall
from riskd.core.margin import liquidation_threshold
from riskd.core.market import CrossLiquidation, MarketSpec
from riskd.core.pickling import FieldsPickled
from riskd.core.position import Position
from riskd.core.units import INT64_MAX, PPM, ceil_div

__all__ = [
    "Leg",
    "Figures",
    "Action",
    "Plan",
    "AccountView",
    "CrossPositionView",
    "figures",
    "liquidatable",
    "in_call_band",
    "plan",
    "allocate",
    "available",
    "account_view",
    "release",
    "order_allowance",
]


@dataclass(frozen=True, slots=True)
class Leg(FieldsPickled):
    """One cross position of an account, as its market holds it."""

    market: str
    spec: MarketSpec
    mark: int | None
    size: int
    basis: int
    margin: int
    liquidating: bool
    #: Its market's mark guard is on (riskd.core.mark_guard): that mark decides nothing.
    guarded: bool = False
    #: The account was in the margin-call band at its last re-check (its markets remember it).
    called: bool = False


@dataclass(frozen=True, slots=True)
class Figures(FieldsPickled):
    """A leg's numbers at its mark (all 0 without a mark): u rounded down,
    requirements up; ``need_num/need_den`` is the exact margin at which it is
    exactly at maintenance."""

    unrealised: int
    mm: int
    im: int
    notional: int
    need_num: int
    need_den: int

    @property
    def need(self) -> int:
        """The least integer margin strictly above maintenance at the mark."""
        return self.need_num // self.need_den + 1 if self.need_den else 0


def figures(leg: Leg) -> Figures:
    if leg.size == 0 or leg.mark is None:
        return Figures(0, 0, 0, 0, 0, 0)
    spec, mark = leg.spec, leg.mark
    num, den = spec.value(leg.size, mark)
    n = abs(num)
    u_exact = num - leg.basis * den  # / den
    best = max(n * t.mmr_ppm - t.cum_scaled * den for t in spec.tiers.tiers)
    notional = ceil_div(n, den)
    return Figures(
        unrealised=u_exact // den,
        mm=ceil_div(max(best, 0), den * PPM),
        im=spec.tiers.initial(notional),
        notional=notional,
        # Liquidatable iff PPM*den*m <= best - PPM*u_exact (margin.is_liquidatable).
        need_num=best - PPM * u_exact,
        need_den=PPM * den,
    )


def liquidatable(legs: Sequence[Leg], free: int) -> bool:
    """Exactly ``E <= MM`` over the legs that have a mark (False if none has)."""
    figs = [(leg, figures(leg)) for leg in legs]
    dens = [f.need_den for _, f in figs if f.need_den]
    if not dens:
        return False
    common = lcm(*dens)
    total = (free + sum(leg.margin for leg, _ in figs)) * common
    for _, f in figs:
        if f.need_den:
            total -= f.need_num * (common // f.need_den)
    return total <= 0


def _against(leg: Leg) -> Leg:
    """The leg with its mark moved against it by its market's ``margin_call_ppm``,
    rounded as the isolated band's edge is (``MarketEngine._in_call_band``)."""
    d = leg.spec.margin_call_ppm
    if leg.mark is None or not d:
        return leg
    mark = leg.mark * PPM // (PPM + d) if leg.size > 0 else leg.mark * PPM // (PPM - d)
    return Leg(
        leg.market,
        leg.spec,
        mark,
        leg.size,
        leg.basis,
        leg.margin,
        leg.liquidating,
        leg.guarded,
        leg.called,
    )


def in_call_band(legs: Sequence[Leg], free: int) -> bool:
    """The account is within its margin-call band: liquidatable were every mark moved
    against its position by that market's ``margin_call_ppm``.

    For one leg this is exactly the isolated rule (the mark within the distance
    of the liquidation price); never while no leg's market has calls on.
    """
    if not any(leg.spec.margin_call_ppm and leg.size and leg.mark for leg in legs):
        return False
    return liquidatable([_against(leg) for leg in legs], free)


class Action(enum.Enum):
    NOTHING = "nothing"  # no open cross position
    WAIT = "wait"  # one is being liquidated: re-checked when it ends
    ALLOCATE = "allocate"  # safe: new bands
    LIQUIDATE = "liquidate"  # E <= MM: close ``liquidate`` (after the new margins)


@dataclass(frozen=True, slots=True)
class Plan(FieldsPickled):
    """What to do with one account: each leg's margin after, the wallet after,
    which markets start liquidating it (in order), and its equity and notional."""

    action: Action
    margins: dict[str, int]
    free: int
    liquidate: tuple[str, ...] = ()
    equity: int = 0
    notional: int = 0
    maintenance: int = 0
    #: LIQUIDATE: "all_at_once", "step_down" (one step) or "bankrupt" (whole).
    policy: str = ""
    #: ALLOCATE: the account is in its margin-call band (each leg's market remembers it).
    called: bool = False
    #: ALLOCATE, the account has just entered the band: the market (largest MM) that
    #: publishes its MarginCall, and the estimated liquidation price there.
    call_market: str = ""
    call_price: int = 0

    def notice(self, asset: str, account: int, ts: int) -> AccountLiquidation:
        """The published effect of a LIQUIDATE plan."""
        return AccountLiquidation(
            asset=asset,
            account=account,
            equity=self.equity,
            maintenance_margin=self.maintenance,
            markets=self.liquidate,
            policy=self.policy,
            ts=ts,
        )

    def margin_call(self, account: int, ts: int) -> MarginCall | None:
        """The published effect of an ALLOCATE plan that entered the band, if any:
        the account's equity and MM, priced in its largest-MM market."""
        if not self.call_market:
            return None
        return MarginCall(
            market=self.call_market,
            account=account,
            margin_balance=self.equity,
            maintenance_margin=self.maintenance,
            liquidation_price=self.call_price,
            ts=ts,
        )


def _shares(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split pro rata to ``weights`` (floors; the rest to the largest weight,
    the first of equals; equal split if all weights are 0).  Sums to ``total`` exactly."""
    w = list(weights) if any(weights) else [1] * len(weights)
    s = sum(w)
    out = [total * x // s for x in w]
    out[w.index(max(w))] += total - sum(out)
    return out


def allocate(legs: Sequence[Leg], figs: Sequence[Figures], wallet: int) -> dict[str, int]:
    """Bands: ``wallet`` over the legs.

    Each leg's margin balance its notional's share of the equity
    (``B_i = N_i × E / ΣN``, floored; the rest to the largest notional), so
    that its effective leverage ``N_i / B_i`` is the account's and ADL ranks it
    so (BitMEX, Bybit), when that keeps every leg above its need.  Otherwise
    (maintenance rates too different) each gets its need plus a share of the
    rest pro rata to MM; short of the needs (a liquidation step's rest), each
    its need in turn and the last what remains.
    """
    needs = [f.need for f in figs]
    equity = wallet + sum(f.unrealised for f in figs)
    total = sum(f.notional for f in figs)
    if equity > 0 and total > 0:
        margins = [f.notional * equity // total - f.unrealised for f in figs]
        margins[max(range(len(figs)), key=lambda i: (figs[i].notional, -i))] += wallet - sum(
            margins
        )
        if all(m >= n for m, n in zip(margins, needs, strict=True)):
            return {leg.market: m for leg, m in zip(legs, margins, strict=True)}
    buffer = wallet - sum(needs)
    if buffer >= 0:
        extra = _shares(buffer, [f.mm for f in figs])
        return {leg.market: n + x for leg, n, x in zip(legs, needs, extra, strict=True)}
    out: dict[str, int] = {}
    left = wallet
    for i, (leg, n) in enumerate(zip(legs, needs, strict=True)):
        out[leg.market] = left if i == len(legs) - 1 else n
        left -= out[leg.market]
    return out


def plan(legs: Sequence[Leg], free: int) -> Plan:
    """Re-check one account exactly; ``free`` is its wallet's unallocated balance.

    Legs being liquidated keep the margin they were given; the others are an
    account of their own.  It waits only for a ``step_down`` step while it
    still has equity; otherwise it is banded or liquidated as usual, so no leg
    is left unwatched while another is worked in the book or waits for ADL.
    It also waits while a leg's mark is guarded: no liquidation is decided on a
    guarded mark (the next good one re-checks).
    """
    if any(leg.guarded for leg in legs):
        return Plan(Action.WAIT, {}, free)
    stepping = [leg for leg in legs if leg.liquidating]
    legs = [leg for leg in legs if leg.size and not leg.liquidating]
    if not legs:
        return Plan(Action.NOTHING, {}, free)
    figs = [figures(leg) for leg in legs]
    wallet = free + sum(leg.margin for leg in legs)
    equity = wallet + sum(f.unrealised for f in figs)
    notional = sum(f.notional for f in figs)
    if not liquidatable(legs, free):
        margins = allocate(legs, figs, wallet)
        if not in_call_band(legs, free):
            return Plan(Action.ALLOCATE, margins, 0, (), equity, notional)
        mm = sum(f.mm for f in figs)
        if any(leg.called for leg in legs):  # called already: again only after leaving
            return Plan(Action.ALLOCATE, margins, 0, (), equity, notional, mm, called=True)
        j = max(range(len(legs)), key=lambda i: (figs[i].mm, -i))
        return Plan(
            Action.ALLOCATE,
            margins,
            0,
            (),
            equity,
            notional,
            mm,
            called=True,
            call_market=legs[j].market,
            call_price=estimated_liquidation_price(legs, free, j),
        )
    step_down = any(x.spec.cross_liquidation is CrossLiquidation.STEP_DOWN for x in stepping)
    if stepping and step_down and equity > 0:
        return Plan(Action.WAIT, {}, free)
    mms = [f.mm for f in figs]
    first = max(range(len(legs)), key=lambda i: (mms[i], -i))
    step = legs[first].spec.cross_liquidation is CrossLiquidation.STEP_DOWN
    if step and equity >= 0 and len(legs) > 1:
        e = min(equity, mms[first])
        margin = e - figs[first].unrealised
        rest = [i for i in range(len(legs)) if i != first]
        margins = allocate([legs[i] for i in rest], [figs[i] for i in rest], wallet - margin)
        margins[legs[first].market] = margin
        return Plan(
            Action.LIQUIDATE,
            margins,
            0,
            (legs[first].market,),
            equity,
            notional,
            sum(mms),
            "step_down",
        )
    shares = _shares(equity, mms) if equity >= 0 else _deficits(legs, figs, equity, mms)
    margins = {leg.market: e - f.unrealised for leg, f, e in zip(legs, figs, shares, strict=True)}
    order = sorted(range(len(legs)), key=lambda i: (-mms[i], i))
    return Plan(
        Action.LIQUIDATE,
        margins,
        0,
        tuple(legs[i].market for i in order),
        equity,
        notional,
        sum(mms),
        "all_at_once" if equity >= 0 else "bankrupt",
    )


def _best(spec: MarketSpec, size: int) -> int:
    tick = spec.tick_size
    return tick if size < 0 else (INT64_MAX // tick) * tick


def _deficits(
    legs: Sequence[Leg], figs: Sequence[Figures], equity: int, mms: Sequence[int]
) -> list[int]:
    """A bankrupt account's negative equity split over its legs pro rata to MM, but
    no linear short (inverse long) below ``−N`` plus its value at its best tick:
    its value is bounded, so a deeper deficit would leave it no bankruptcy price
    at all (an isolated one always has one); the rest goes to the other legs."""
    shares = _shares(equity, mms)
    bounded = [(leg.size < 0) == leg.spec.is_linear for leg in legs]
    # At least worth the position at its best price on the tick (a short's lowest,
    # an inverse long's highest): its bankruptcy price must be a price.
    floor = [
        2 - f.notional + abs(leg.spec.trade_value(leg.size, _best(leg.spec, leg.size)))
        for leg, f in zip(legs, figs, strict=True)
    ]
    for _ in range(len(legs)):
        excess = 0
        for i, b in enumerate(bounded):
            if b and shares[i] < floor[i]:
                excess += floor[i] - shares[i]
                shares[i] = floor[i]
        if not excess:
            break
        room = [i for i, b in enumerate(bounded) if not b or shares[i] > floor[i]]
        if not room:
            shares[0] -= excess  # cannot happen (|E| < ΣN here); conserve anyway
            break
        extra = _shares(-excess, [mms[i] for i in room])
        for i, x in zip(room, extra, strict=True):
            shares[i] += x
    return shares


def available(legs: Sequence[Leg], free: int) -> int:
    """What may leave the cross wallet: ``W + min(Σu, 0) − IM``, at least 0."""
    figs = [figures(leg) for leg in legs if leg.size]
    wallet = free + sum(leg.margin for leg in legs)
    u = sum(f.unrealised for f in figs)
    return max(wallet + min(u, 0) - sum(f.im for f in figs), 0)


@dataclass(frozen=True, slots=True)
class CrossPositionView(FieldsPickled):
    """A cross position in the account view; prices 0 where undefined."""

    market: str
    size: int
    unrealised: int
    maintenance_margin: int
    initial_margin: int
    #: Where the mark liquidates the account, every other mark held fixed.
    estimated_liquidation_price: int
    adl_quintile: int
    in_liquidation: bool


@dataclass(frozen=True, slots=True)
class AccountView(FieldsPickled):
    """One account's cross margin in one asset, as queries show it."""

    account: int
    asset: str
    wallet: int
    equity: int
    maintenance_margin: int
    initial_margin: int
    #: MM / equity in ppm (the venues' "margin ratio"; 1e6 and above: liquidatable);
    #: INT64_MAX when the equity is not positive.
    margin_ratio_ppm: int
    available: int
    in_liquidation: bool
    positions: tuple[CrossPositionView, ...]


def estimated_liquidation_price(legs: Sequence[Leg], free: int, j: int) -> int:
    """Leg ``j``'s mark at which the account is liquidatable, the others' marks fixed.

    Leg ``j`` as an isolated position whose margin is the wallet plus what the
    other legs bring (``u_i − MM_i``, each rounded against the trader); on the
    tick (a long's at or below, a short's at or above); 0 if none.
    """
    leg = legs[j]
    if leg.size == 0:
        return 0
    others = sum(f.unrealised - f.mm for i, f in enumerate(figures(x) for x in legs) if i != j)
    wallet = free + sum(x.margin for x in legs)
    pos = Position(0)
    pos.size, pos.basis, pos.margin = leg.size, leg.basis, wallet + others
    t = liquidation_threshold(leg.spec, pos)
    tick = leg.spec.tick_size
    p = (t // tick) * tick if leg.size > 0 else ceil_div(t, tick) * tick
    return p if 0 < p <= INT64_MAX else 0


def account_view(
    account: int, asset: str, legs: Sequence[Leg], free: int, quintiles: Sequence[int]
) -> AccountView:
    """The account view (``quintiles``: each leg's ADL quintile, from its market)."""
    figs = [figures(leg) for leg in legs]
    wallet = free + sum(leg.margin for leg in legs)
    equity = wallet + sum(f.unrealised for f in figs)
    mm = sum(f.mm for f in figs)
    ratio = ceil_div(mm * PPM, equity) if equity > 0 else INT64_MAX
    return AccountView(
        account=account,
        asset=asset,
        wallet=wallet,
        equity=equity,
        maintenance_margin=mm,
        initial_margin=sum(f.im for f in figs),
        margin_ratio_ppm=min(ratio, INT64_MAX),
        available=available(legs, free),
        in_liquidation=any(leg.liquidating for leg in legs),
        positions=tuple(
            CrossPositionView(
                market=leg.market,
                size=leg.size,
                unrealised=f.unrealised,
                maintenance_margin=f.mm,
                initial_margin=f.im,
                estimated_liquidation_price=estimated_liquidation_price(legs, free, i),
                adl_quintile=q,
                in_liquidation=leg.liquidating,
            )
            for i, (leg, f, q) in enumerate(zip(legs, figs, quintiles, strict=True))
        ),
    )


def order_allowance(legs: Sequence[Leg], free: int, reserved_elsewhere: int) -> int:
    """What a cross account's next order check in one market may commit: what its
    wallet could release (:func:`available`) less what its open orders in the
    asset's other markets reserve; nothing while it is being liquidated."""
    if any(leg.liquidating for leg in legs):
        return 0
    return available([leg for leg in legs if leg.size], free) - reserved_elsewhere


def release(
    legs: Sequence[Leg], free: int, amount: int, field: str, reserved: int = 0
) -> dict[str, int] | None:
    """Make ``amount`` of the account's cross wallet free to leave (a withdrawal, a
    transfer to an isolated position): new bands over the rest, or None if the
    free balance already covers it.  Refused (FAILED_PRECONDITION on ``field``)
    beyond :func:`available` less ``reserved`` (what the account's open orders
    hold, :mod:`riskd.core.risk_gate`) or while the account is being liquidated."""
    if any(leg.liquidating for leg in legs):
        raise Rejected.precondition(
            field, "the account's cross positions in this asset are being liquidated"
        )
    guarded = [leg.market for leg in legs if leg.guarded and leg.size]
    if guarded:
        raise Rejected.precondition(
            field, f"{guarded[0]}'s mark is guarded: cross margin stays until a good mark"
        )
    legs = [leg for leg in legs if leg.size]
    if not legs and not reserved:
        return None
    can = available(legs, free) - reserved
    if amount > can:
        raise Rejected.precondition(
            field,
            f"{amount} exceeds the {max(can, 0)} available in the cross wallet (wallet +"
            " unrealised loss − initial margin of the cross positions − what open orders"
            " reserve; unrealised profit never leaves)",
        )
    if not legs or amount <= free:
        return None
    wallet = free + sum(leg.margin for leg in legs)
    return allocate(legs, [figures(leg) for leg in legs], wallet - amount)
