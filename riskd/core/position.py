"""An isolated-margin position and the one way it changes: a trade.

A position keeps its exact *cost basis* (the sum of the trade values that
opened it) instead of a rounded average price, so the sum of unrealised PnL
over a market, which nets to zero size, is exact and mark-independent.

Margin belongs to the position (isolated mode).  Cross margin will hold the
same positions with ``margin`` left at zero and the account's wallet as the
collateral; nothing here assumes where the collateral lives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from mypy_extensions import mypyc_attr

from riskd.core.units import ceil_div, magnitude, mul

__all__ = ["Position", "BACKSTOP_ACCOUNT", "NOT_INDEXED", "traded"]

#: The fund's backstop account: it takes over positions in ``takeover`` markets.
#: The top uint64 value is reserved for it; gateways may name it in fills that
#: close its inventory through the book.
BACKSTOP_ACCOUNT: Final = 2**64 - 1
#: :attr:`Position.threshold` of a position the liquidation index does not hold
#: (flat, frozen by a liquidation, or not tracked yet): thresholds are >= 0.
NOT_INDEXED: Final = -1


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class Position:
    """One account's position in one market.

    ``threshold`` is the price the market's liquidation index holds it at
    (see :mod:`riskd.core.liquidation_index`; :data:`NOT_INDEXED` when it holds
    none), ``liquidation`` the id of the liquidation that froze it, if any.
    """

    __slots__ = ("account", "size", "basis", "margin", "threshold", "liquidation")

    def __init__(self, account: int) -> None:
        self.account = account
        self.size = 0
        self.basis = 0
        self.margin = 0
        self.threshold = NOT_INDEXED
        self.liquidation = 0

    # Pickled as its six fields in order, rebuilt by _restore_indexed_position:
    # no dict per position (a snapshot holds a million), the same in both cores.
    def __reduce__(self) -> tuple[Callable[..., Position], tuple[object, ...]]:
        return _restore_indexed_position, (
            self.account,
            self.size,
            self.basis,
            self.margin,
            self.threshold,
            self.liquidation,
        )

    # Snapshots written before __reduce__: CPython's shape of a slotted class,
    # with the index key of the time (see _restore_position).
    def __setstate__(self, state: tuple[object, dict[str, Any]]) -> None:
        slots = state[1]
        self.account = slots["account"]
        self.size = slots["size"]
        self.basis = slots["basis"]
        self.margin = slots["margin"]
        self.threshold = _threshold_of_key(slots.get("key"))
        self.liquidation = slots.get("liquidation", 0)

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
        leaves pro rata; on a flip, the trade's value is split between the close
        and the open.  Both splits round the realised PnL down (the part that
        leaves rounds up, :func:`~riskd.core.units.ceil_div`): the rest stays in
        the remaining basis, so nothing is lost, and the holder can never
        withdraw a rounding it has not earned.  The position's equity
        (``margin + value(size, P) - basis``) does not depend on either split.
        """
        self.size, self.basis, realised = traded(self.size, self.basis, qty, value)
        return realised


def traded(size: int, basis: int, qty: int, value: int) -> tuple[int, int, int]:
    """:meth:`Position.trade` on the numbers alone: ``(size, basis, realised)`` after.

    A fill plans both sides with this before it changes anything, without a
    trial :class:`Position` per side.
    """
    if size == 0 or (size > 0) == (qty > 0):
        return size + qty, basis + value, 0
    traded_qty, held = magnitude(qty), magnitude(size)  # native, unlike abs() and min()
    closing = traded_qty if traded_qty < held else held
    close_value = value if closing == traded_qty else ceil_div(mul(value, closing), traded_qty)
    released = basis if closing == held else ceil_div(mul(basis, closing), held)
    after = size + qty
    basis -= released
    if after and (after > 0) != (size > 0):
        basis += value - close_value
    return after, basis, -close_value - released


def _restore_indexed_position(
    account: int, size: int, basis: int, margin: int, threshold: int, liquidation: int
) -> Position:
    """A pickled :class:`Position` (its ``__reduce__``)."""
    pos = Position(account)
    pos.size = size
    pos.basis = basis
    pos.margin = margin
    pos.threshold = threshold
    pos.liquidation = liquidation
    return pos


def _restore_position(
    account: int, size: int, basis: int, margin: int, key: int | None, liquidation: int
) -> Position:
    """A :class:`Position` pickled before the index held thresholds and accounts
    apart: its fifth field is the index key ``threshold << 64 | account`` or None."""
    return _restore_indexed_position(
        account, size, basis, margin, _threshold_of_key(key), liquidation
    )


def _threshold_of_key(key: int | None) -> int:
    return NOT_INDEXED if key is None else key >> 64
