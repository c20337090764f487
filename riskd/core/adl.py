"""Auto-deleveraging: who is closed, in what order, when the fund will not pay.

The bankrupt position is closed at its bankruptcy price against opposite-side
positions ranked by a policy score, highest first, ties broken by account id,
so the ranking is deterministic.

Scores are exact rationals floored to 64 fractional bits (integers: fast,
deterministic, no floating point).

Policies (DOMAIN.md §2), with ``u`` unrealised PnL at the mark, ``c`` the cost
basis, ``B`` the margin balance, ``N`` the notional and ``MM`` the maintenance
margin:

* ``PNL_LEVERAGE`` (BitMEX/Bybit): ``PnL% = u/|c|``, ``EffLev = N/B``;
  score ``PnL% × EffLev`` when profitable, ``PnL% / EffLev`` otherwise.
* ``LEVERAGE_PNL`` (Binance): ``max(0,u)/max(1,M) × MM/(M+u)``.
* ``PRO_RATA_RISK`` (Chitra 2025, arXiv 2512.01112, "risk-aware ADL"): ranked
  like ``PNL_LEVERAGE``, but the bankrupt quantity is *split* across the
  profitable counterparties in proportion to their risk ``u × N/B`` (profit ×
  effective leverage) instead of closing whole positions from the top of the
  queue.  A position is closed whole only when its share reaches its size.
  The pool is the first-ranked profitable counterparties holding
  :data:`POOL_FACTOR` times the quantity (bounded work in a cascade).

Further policies plug in through :data:`POLICIES` (the ranking) and
:data:`ALLOCATIONS` (how the quantity is shared along it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from riskd.core.margin import maintenance_margin
from riskd.core.market import AdlPolicy, MarketSpec
from riskd.core.position import Position

__all__ = [
    "Score",
    "Allocation",
    "POLICIES",
    "ALLOCATIONS",
    "POOL_FACTOR",
    "score",
    "risk",
    "rank",
    "quintiles",
    "allocate",
    "split",
]

Score = Callable[[MarketSpec, Position, int], int]

#: Scores are exact fractions floored to this many fractional bits: integer
#: keys sort ten times faster than ``Fraction`` and stay deterministic.
_BITS = 64
#: ``pro_rata_risk`` shares a bankrupt quantity among the first-ranked
#: profitable counterparties holding this many times it (or all of them).
POOL_FACTOR = 8


def _parts(spec: MarketSpec, pos: Position, mark: int) -> tuple[int, int, int, int]:
    """``(U, den, |num|, Bn)``: u = U/den, N = |num|/den, B = Bn/den (B >= 1)."""
    num, den = spec.value(pos.size, mark)
    u = num - pos.basis * den
    return u, den, max(abs(num), den), max(pos.margin * den + u, den)


def _pnl_leverage(spec: MarketSpec, pos: Position, mark: int) -> int:
    u, den, n, b = _parts(spec, pos, mark)
    cost = max(abs(pos.basis), 1)
    if u > 0:  # PnL% x EffLev = (u/|c|) x (N/B)
        return (u * n << _BITS) // (cost * den * b)
    return (u * b << _BITS) // (cost * den * n)  # PnL% / EffLev


def _leverage_pnl(spec: MarketSpec, pos: Position, mark: int) -> int:
    u, den, _, b = _parts(spec, pos, mark)
    margin = max(pos.margin, 1)
    if u <= 0:  # below every profitable position
        return ((u << _BITS) // (den * margin)) - (1 << _BITS)
    mm = maintenance_margin(spec, pos, mark)
    return (u * mm << _BITS) // (margin * b)  # (u/M) x MM/B


POLICIES: dict[AdlPolicy, Score] = {
    AdlPolicy.PNL_LEVERAGE: _pnl_leverage,
    AdlPolicy.LEVERAGE_PNL: _leverage_pnl,
    # Ranked like BitMEX: the order still decides quintiles and who gives the
    # rounding steps; the quantity itself is shared (see ALLOCATIONS).
    AdlPolicy.PRO_RATA_RISK: _pnl_leverage,
}


def score(spec: MarketSpec, pos: Position, mark: int) -> int:
    """The policy's score, scaled by 2**64 and floored (higher: deleveraged first)."""
    return POLICIES[spec.adl_policy](spec, pos, mark)


def rank(spec: MarketSpec, positions: Iterable[Position], mark: int) -> list[Position]:
    """Positions in ADL order: first in line first."""
    fn = POLICIES[spec.adl_policy]
    scored = [(-fn(spec, p, mark), p.account, p) for p in positions]
    scored.sort(key=lambda t: (t[0], t[1]))
    return [p for _, _, p in scored]


def quintiles(ranked: Sequence[Position]) -> dict[int, int]:
    """Account → ADL indicator 1..5 (5 = first in line), by rank within a side."""
    n = len(ranked)
    return {p.account: 5 - (5 * i) // n for i, p in enumerate(ranked)}


def risk(spec: MarketSpec, pos: Position, mark: int) -> int:
    """Profit × effective leverage ``u × N/B``, scaled by 2**64 and floored; 0 if not in profit."""
    u, den, n, b = _parts(spec, pos, mark)
    if u <= 0:
        return 0
    return (u * n << _BITS) // (den * b)


Allocation = Callable[[Iterable[Position], int, MarketSpec, int], list[tuple[Position, int]]]


def _queue(
    ranked: Iterable[Position], quantity: int, spec: MarketSpec | None, mark: int
) -> list[tuple[Position, int]]:
    """Each position fully before the next (BitMEX, Binance, Bybit)."""
    out: list[tuple[Position, int]] = []
    left = quantity
    for pos in ranked:
        if left == 0:
            break
        take = min(left, abs(pos.size))
        out.append((pos, take))
        left -= take
    return out


def _pro_rata_risk(
    ranked: Iterable[Position], quantity: int, spec: MarketSpec, mark: int
) -> list[tuple[Position, int]]:
    """Split ``quantity`` over the profitable counterparties pro rata to :func:`risk`.

    The pool is the first-ranked profitable counterparties until they hold
    :data:`POOL_FACTOR` times the quantity (or all of them): each then gives
    at most about a ``1/POOL_FACTOR`` share, and a cascade of ADLs in one
    input walks O(k) positions each, as the queue does, not the whole side.
    The backstop and positions not in profit have no weight: they are taken,
    queue-style in rank order, only for what the profitable ones cannot cover
    (the backstop stays the counterparty of last resort).
    """
    rest = iter(ranked)
    order: list[Position] = []
    pool: list[tuple[int, Position, int]] = []
    held = 0
    for p in rest:
        order.append(p)
        if not p.is_backstop and (w := risk(spec, p, mark)):
            pool.append((len(order) - 1, p, w))
            held += abs(p.size)
            if held >= POOL_FACTOR * quantity:
                break
    shared = min(quantity, held)
    shares = split(
        [abs(p.size) for _, p, _ in pool], [w for _, _, w in pool], shared, spec.step_size
    )
    took = [0] * len(order)
    for (i, _, _), x in zip(pool, shares, strict=True):
        took[i] = x
    left = quantity - shared
    if left:  # the whole side was read: the pool could not cover it
        for i, p in enumerate(order):
            extra = min(left, abs(p.size) - took[i])
            took[i] += extra
            left -= extra
            if left == 0:
                break
    return [(p, x) for p, x in zip(order, took, strict=True) if x]


def split(caps: Sequence[int], weights: Sequence[int], quantity: int, step: int) -> list[int]:
    """Share ``quantity`` pro rata to ``weights`` (> 0), none above its cap, in whole steps.

    Largest remainders: every share is the floor of its exact pro-rata part in
    steps, and the steps left over go one each to the largest fractional
    parts, ties to the earlier item.  A share that would exceed its cap is
    the cap, and the rest is shared again among the others (water-filling).
    The shares sum to exactly ``quantity`` (which must not exceed the caps' sum).
    ``step`` is reduced to a common divisor of the quantity and the caps, so
    sizes left off the step by a step-size change still add up exactly.
    """
    if quantity > sum(caps):
        raise ValueError(f"cannot share {quantity} within caps totalling {sum(caps)}")
    g = math.gcd(step, quantity, *caps) or 1
    out = [0] * len(caps)
    live = [i for i in range(len(caps)) if caps[i]]
    left = quantity // g
    while left:
        total = sum(weights[i] for i in live)
        # Saturate every item whose pro-rata part reaches its cap: the others'
        # parts only grow when those leave, so repeat until none does.
        full = [i for i in live if caps[i] // g * total <= left * weights[i]]
        if full:
            for i in full:
                out[i] = caps[i]
                left -= caps[i] // g
            keep = set(full)
            live = [i for i in live if i not in keep]
            continue
        rems = []
        for i in live:
            share, rem = divmod(left * weights[i], total)
            out[i] = share * g
            rems.append((-rem, i))
        spare = left - sum(out[i] for i in live) // g
        rems.sort()
        for _, i in rems[:spare]:
            out[i] += g
        break
    return out


#: How a policy shares the bankrupt quantity along its ranking.
ALLOCATIONS: dict[AdlPolicy, Allocation] = {
    AdlPolicy.PNL_LEVERAGE: _queue,
    AdlPolicy.LEVERAGE_PNL: _queue,
    AdlPolicy.PRO_RATA_RISK: _pro_rata_risk,
}


def allocate(
    ranked: Iterable[Position],
    quantity: int,
    spec: MarketSpec | None = None,
    mark: int = 0,
) -> list[tuple[Position, int]]:
    """``(position, quantity)`` to close from ranked positions, in rank order, none empty.

    ``spec`` picks the policy's allocation (without one: queue, each position
    fully before the next); ``mark`` is the price its risk weights are read at.
    Takes less than ``quantity`` only if the positions hold less.
    """
    if spec is None:
        return _queue(ranked, quantity, None, mark)
    return ALLOCATIONS[spec.adl_policy](ranked, quantity, spec, mark)
