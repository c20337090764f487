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

Further policies plug in through :data:`POLICIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from riskd.core.margin import maintenance_margin
from riskd.core.market import AdlPolicy, MarketSpec
from riskd.core.position import Position

__all__ = ["Score", "POLICIES", "score", "rank", "quintiles", "allocate"]

Score = Callable[[MarketSpec, Position, int], int]

#: Scores are exact fractions floored to this many fractional bits: integer
#: keys sort ten times faster than ``Fraction`` and stay deterministic.
_BITS = 64


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


def allocate(ranked: Iterable[Position], quantity: int) -> list[tuple[Position, int]]:
    """Take ``quantity`` from ranked positions, each fully before the next."""
    out: list[tuple[Position, int]] = []
    left = quantity
    for pos in ranked:
        if left == 0:
            break
        take = min(left, abs(pos.size))
        out.append((pos, take))
        left -= take
    return out
