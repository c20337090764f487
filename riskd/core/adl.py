"""Auto-deleveraging: who is closed, in what order, when the fund will not pay.

The bankrupt position is closed at its bankruptcy price against opposite-side
positions ranked by a policy score, highest first.  Scores are exact
fractions (no float), ties broken by account id, so the ranking is
deterministic.

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
from fractions import Fraction

from riskd.core.margin import maintenance_margin
from riskd.core.market import AdlPolicy, MarketSpec
from riskd.core.position import Position

__all__ = ["Score", "POLICIES", "score", "rank", "quintiles", "allocate"]

Score = Callable[[MarketSpec, Position, int], Fraction]


def _exact(spec: MarketSpec, pos: Position, mark: int) -> tuple[Fraction, Fraction, Fraction]:
    num, den = spec.value(pos.size, mark)
    u = Fraction(num - pos.basis * den, den)
    notional = Fraction(abs(num), den)
    return u, notional, pos.margin + u


def _pnl_leverage(spec: MarketSpec, pos: Position, mark: int) -> Fraction:
    u, notional, balance = _exact(spec, pos, mark)
    pnl = u / max(abs(pos.basis), 1)
    balance = max(balance, Fraction(1))
    notional = max(notional, Fraction(1))
    return pnl * notional / balance if pnl > 0 else pnl * balance / notional


def _leverage_pnl(spec: MarketSpec, pos: Position, mark: int) -> Fraction:
    u, _, balance = _exact(spec, pos, mark)
    if u <= 0:
        return Fraction(u, 1) / max(pos.margin, 1) - 1  # below every profitable one
    mm = maintenance_margin(spec, pos, mark)
    return u / max(pos.margin, 1) * mm / max(balance, Fraction(1))


POLICIES: dict[AdlPolicy, Score] = {
    AdlPolicy.PNL_LEVERAGE: _pnl_leverage,
    AdlPolicy.LEVERAGE_PNL: _leverage_pnl,
}


def score(spec: MarketSpec, pos: Position, mark: int) -> Fraction:
    return POLICIES[spec.adl_policy](spec, pos, mark)


def rank(spec: MarketSpec, positions: Iterable[Position], mark: int) -> list[Position]:
    """Positions in ADL order: first in line first."""
    scored = [(score(spec, p, mark), p.account, p) for p in positions]
    scored.sort(key=lambda t: (-t[0], t[1]))
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
