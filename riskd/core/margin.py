"""Margin arithmetic for an isolated position: exact, integer, sans-IO.

Notation (DOMAIN.md §2): ``q`` signed size, ``c`` cost basis, ``M`` isolated
margin, ``P`` a price, ``v(q, P) = num/den`` the exact value (see
:meth:`MarketSpec.value`).  Then::

    u  = v(q, P) - c                   unrealised PnL
    B  = M + u                         margin balance
    N  = |v(q, P)|                     notional
    MM = max_t (N * MMR_t - cum_t)     maintenance margin (tiers are convex)

and a position is liquidatable iff ``B <= MM``, compared exactly by clearing
denominators.  Displayed amounts round against the trader: unrealised PnL
down, requirements up.

Liquidation and bankruptcy *thresholds* are solved in closed form per tier
and combined with max/min (a long is liquidatable iff ``P <= max_t LP_t``, a
short iff ``P >= min_t LP_t``), so they are the exact integer prices at which
the predicate flips, not approximations to be re-checked.
"""

from __future__ import annotations

from typing import Final

from riskd.core.market import MarketSpec
from riskd.core.position import Position
from riskd.core.units import INT64_MAX, PPM, ceil_div, mul, short

__all__ = [
    "unrealised",
    "margin_balance",
    "notional",
    "maintenance_margin",
    "initial_margin",
    "is_liquidatable",
    "is_bankrupt",
    "liquidation_threshold",
    "liquidation_threshold_of",
    "bankruptcy_threshold",
    "bankruptcy_threshold_of",
    "NEVER_LONG",
    "NEVER_SHORT",
]

#: Threshold meaning "never crosses": no positive price is <= 0 and none >= 2**63.
NEVER_LONG: Final = 0
NEVER_SHORT: Final = INT64_MAX + 1


def unrealised(spec: MarketSpec, pos: Position, price: int) -> int:
    """Unrealised PnL at ``price``, rounded down."""
    num, den = spec.value(pos.size, price)
    return (num - pos.basis * den) // den


def margin_balance(spec: MarketSpec, pos: Position, price: int) -> int:
    return pos.margin + unrealised(spec, pos, price)


def notional(spec: MarketSpec, pos: Position, price: int) -> int:
    """Notional at ``price``, rounded up (it scales requirements)."""
    num, den = spec.notional(pos.size, price)
    return ceil_div(num, den)


def maintenance_margin(spec: MarketSpec, pos: Position, price: int) -> int:
    """Maintenance margin at ``price``, rounded up."""
    num, den = spec.notional(pos.size, price)
    best = max(num * t.mmr_ppm - t.cum_scaled * den for t in spec.tiers.tiers)
    return ceil_div(max(best, 0), den * PPM)


def initial_margin(spec: MarketSpec, pos: Position, price: int) -> int:
    """Initial margin at the max leverage of the position's bracket, rounded up."""
    return spec.tiers.initial(notional(spec, pos, price))


def is_liquidatable(spec: MarketSpec, pos: Position, price: int) -> bool:
    """Exactly ``B <= MM`` at ``price``; a flat position never is."""
    if pos.size == 0:
        return False
    num, den = spec.value(pos.size, price)
    lhs = PPM * ((pos.margin - pos.basis) * den + num)
    n = abs(num)
    return any(lhs <= n * t.mmr_ppm - t.cum_scaled * den for t in spec.tiers.tiers)


def is_bankrupt(spec: MarketSpec, pos: Position, price: int) -> bool:
    """``B <= 0`` at ``price``: the margin is gone (the backstop's trigger)."""
    if pos.size == 0:
        return False
    num, den = spec.value(pos.size, price)
    return (pos.margin - pos.basis) * den + num <= 0


def _threshold(spec: MarketSpec, q: int, equity: int, mmr: int, cum_scaled: int) -> int:
    """Integer price where ``equity + v(q, P) <= N*mmr - cum`` starts to hold.

    ``equity`` is ``M - c``.  For a long the predicate holds for ``P <= result``;
    for a short for ``P >= result``.
    """
    if spec.is_linear:
        k = spec.value(1, 1)[0]
        if q > 0:  # P*q*k*(1e6 - mmr) <= 1e6*(c - M) - cum
            return max(((-PPM * equity) - cum_scaled) // (q * k * (PPM - mmr)), NEVER_LONG)
        a = -q  # P*a*k*(1e6 + mmr) >= 1e6*(M - c) + cum
        return min(max(ceil_div(PPM * equity + cum_scaled, a * k * (PPM + mmr)), 1), NEVER_SHORT)
    inv = spec.value(-1, 1)[0]  # cv * 10**pd * 10**ad
    qd = spec.value(-1, 1)[1]
    d = PPM * equity + cum_scaled
    if q > 0:  # P*qd*d <= q*inv*(1e6 + mmr)
        if d <= 0:
            return INT64_MAX
        return max(min((q * inv * (PPM + mmr)) // (qd * d), INT64_MAX), NEVER_LONG)
    a = -q  # P*qd*d <= -a*inv*(1e6 - mmr)
    if d >= 0:
        return NEVER_SHORT
    return min(max(ceil_div(a * inv * (PPM - mmr), qd * -d), 1), NEVER_SHORT)


def liquidation_threshold(spec: MarketSpec, pos: Position) -> int:
    """The liquidation price as an exact integer threshold (see module doc)."""
    return liquidation_threshold_of(spec, pos.size, pos.basis, pos.margin)


def liquidation_threshold_of(spec: MarketSpec, q: int, basis: int, margin: int) -> int:
    """:func:`liquidation_threshold` of a position of size ``q`` with these numbers
    (a fill's planned side, before anything changes).

    The same closed forms as :func:`_threshold`, one per tier, with the tier
    constants precomputed: this runs on every fill, for both sides.  Written
    as plain loops over native ints (compiled, no generator or boxed max),
    and the clamps to the never-crosses values test the unboxed range first.

    The loops stop at the first tier past the extreme.  In tier order the
    thresholds rise to the binding tier's and fall after it (a long's; a
    short's fall, then rise): MM is the continuous upper envelope of the
    tiers' lines, each on it over its bracket, their slopes ordered by tier.
    Two consecutive tiers' lines meet on the envelope at their bracket
    floor, so both flip the predicate on the same side of that floor, in the
    order their slopes give; the side is the binding bracket's, before the
    floor or after it, so the order reverses there (for inverse contracts
    the same holds in ``1/P``).  Rounding to integers keeps the order; ties
    do not stop a loop (tests/core/test_margin.py checks it against every
    tier's closed form over random tier tables).
    """
    e = mul(PPM, margin - basis)
    coefs = spec._tier_coefs
    if spec._linear_k:
        if q > 0:  # max_t floor((-e - cum) / (q * k * (1e6 - mmr))), at least NEVER_LONG
            top, first = 0, True
            for cum, lo, _hi in coefs:  # named: compiled, a value put in `_` is boxed
                t = (-e - cum) // (q * lo)
                if first or t > top:
                    top, first = t, False
                elif t < top:  # past the highest: the rest only fall
                    break
            return top if top > NEVER_LONG else NEVER_LONG
        a = -q  # min_t ceil((e + cum) / (a * k * (1e6 + mmr))), within 1..NEVER_SHORT
        best, found = 0, False
        for cum, _lo, hi in coefs:
            t = -((-e - cum) // (a * hi))
            if not found or t < best:
                best, found = t, True
            elif t > best:  # past the lowest: the rest only rise
                break
        return _within_short(best, found)
    inv, qd = spec._inverse_num, spec._inverse_den
    if q > 0:  # floor(q * inv * (1e6 + mmr) / (qd * d)), d = e + cum; d <= 0: always
        top, first = 0, True
        for cum, up, _down in coefs:
            t = (q * inv * up) // (qd * (e + cum)) if e + cum > 0 else INT64_MAX
            if not short(t) and t > INT64_MAX:  # clamped per tier: the order above holds
                t = INT64_MAX
            if first or t > top:
                top, first = t, False
            elif t < top:
                break
        return top if top > NEVER_LONG else NEVER_LONG
    a = -q  # ceil(a * inv * (1e6 - mmr) / (qd * -d)); d >= 0: never
    best, found = 0, False
    for cum, _up, down in coefs:
        if e + cum >= 0:  # cum never falls with the tier: this one and the rest never cross
            break
        t = -((-a * inv * down) // (qd * -(e + cum)))
        if not found or t < best:
            best, found = t, True
        elif t > best:
            break
    return _within_short(best, found)


def _within_short(best: int, found: bool) -> int:
    """A short's threshold clamped to 1..NEVER_SHORT (not found: never crosses)."""
    if not found:
        return NEVER_SHORT
    if best < 1:
        return 1
    return best if short(best) else min(best, NEVER_SHORT)


def bankruptcy_threshold(spec: MarketSpec, pos: Position, extra_margin: int = 0) -> int:
    """The price at which margin (plus ``extra_margin``) is exactly used up.

    For a long, the lowest integer price at which closing leaves margin >= 0 is
    ``bankruptcy_threshold + 1``; callers that execute at it round to the tick
    against the trader (see :func:`riskd.core.liquidation.execution_price`).
    """
    return _threshold(spec, pos.size, pos.margin + extra_margin - pos.basis, 0, 0)


def bankruptcy_threshold_of(spec: MarketSpec, q: int, basis: int, margin: int) -> int:
    """:func:`bankruptcy_threshold` of a position of size ``q`` with these numbers."""
    return _threshold(spec, q, margin - basis, 0, 0)
