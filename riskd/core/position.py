"""An isolated-margin position and the one way it changes: a trade.

A position keeps its exact *cost basis* (the sum of the trade values that
opened it) instead of a rounded average price, so the sum of unrealised PnL
over a market, which nets to zero size, is exact and mark-independent.

Margin belongs to the position (isolated mode).  Cross margin will hold the
same positions with ``margin`` left at zero and the account's wallet as the
collateral; nothing here assumes where the collateral lives.
"""

from __future__ import annotations

__all__ = ["Position", "BACKSTOP_ACCOUNT"]

#: The fund's backstop account: it takes over positions in ``takeover`` markets.
#: The top uint64 value is reserved for it; gateways may name it in fills that
#: close its inventory through the book.
BACKSTOP_ACCOUNT = 2**64 - 1


class Position:
    """One account's position in one market.

    ``key`` is the position's entry in the market's liquidation index (see
    :mod:`riskd.core.liquidation_index`), ``liquidation`` the id of the
    liquidation that froze it, if any.
    """

    __slots__ = ("account", "size", "basis", "margin", "key", "liquidation")

    def __init__(self, account: int) -> None:
        self.account = account
        self.size = 0
        self.basis = 0
        self.margin = 0
        self.key: int | None = None
        self.liquidation = 0

    def __repr__(self) -> str:
        return (
            f"Position(account={self.account}, size={self.size}, basis={self.basis},"
            f" margin={self.margin}, liquidation={self.liquidation})"
        )

    @property
    def is_backstop(self) -> bool:
        return self.account == BACKSTOP_ACCOUNT

    def trade(self, qty: int, value: int) -> int:
        """Apply a trade of signed ``qty`` worth ``value``; return realised PnL.

        The realised PnL is not credited anywhere: the caller decides where it
        goes (the position's margin, in isolated mode).  On a reduce, the basis
        leaves pro rata, rounded toward minus infinity; what rounding keeps stays
        in the remaining basis, so nothing is lost.
        """
        size = self.size
        if size == 0 or (size > 0) == (qty > 0):
            self.size = size + qty
            self.basis += value
            return 0
        closing = min(abs(qty), abs(size))
        # On a flip the trade value is split between the close and the open.
        close_value = value if closing == abs(qty) else value * closing // abs(qty)
        released = self.basis if closing == abs(size) else self.basis * closing // abs(size)
        realised = -close_value - released
        self.basis -= released
        self.size = size + qty
        if self.size and (self.size > 0) != (size > 0):
            self.basis += value - close_value
        return realised
