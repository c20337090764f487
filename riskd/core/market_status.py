"""Where a market is in its life: open, halted, close-only or settled.

The status is what an operator decides (the lifecycle admin calls); it is
state like a position, journaled as the input that changed it and kept in
snapshots.  The mark-price guard is a separate, automatic flag
(:mod:`riskd.core.mark_guard`): a market can be open *and* guarded, in which
case liquidations pause and pre-trade checks use the last good mark, while
trading goes on.  Status answers "may this trade happen"; the guard answers
"may this mark decide anything".

| status | fills | new exposure (orders that grow a position) | marks, funding | liquidations |
|---|---|---|---|---|
| OPEN | yes | yes | yes | yes (unless guarded) |
| CLOSE_ONLY | only ones that shrink both sides | no | yes | yes (unless guarded) |
| HALTED | no (liquidation fills yes) | no | yes | yes (unless guarded) |
| SETTLED | no | no | no | none: every position was closed at the settlement price |

SETTLED is final: the market keeps no positions, refuses every input and is
left out of queries; its fee pool stays (conservation counts it).
"""

from __future__ import annotations

import enum

__all__ = ["MarketStatus", "TRANSITIONS"]


class MarketStatus(enum.Enum):
    OPEN = "open"
    HALTED = "halted"
    CLOSE_ONLY = "close_only"
    SETTLED = "settled"

    @property
    def trades(self) -> bool:
        """Whether ordinary fills may happen at all."""
        return self is MarketStatus.OPEN or self is MarketStatus.CLOSE_ONLY

    @property
    def grows(self) -> bool:
        """Whether a position may grow (an order adding exposure)."""
        return self is MarketStatus.OPEN


#: The status changes an operator may make (SETTLED comes only from a settlement).
TRANSITIONS: dict[MarketStatus, frozenset[MarketStatus]] = {
    MarketStatus.OPEN: frozenset({MarketStatus.HALTED, MarketStatus.CLOSE_ONLY}),
    MarketStatus.HALTED: frozenset({MarketStatus.OPEN, MarketStatus.CLOSE_ONLY}),
    MarketStatus.CLOSE_ONLY: frozenset({MarketStatus.OPEN, MarketStatus.HALTED}),
    MarketStatus.SETTLED: frozenset(),
}
