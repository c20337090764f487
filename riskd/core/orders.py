"""Open orders and the margin reserved for them, per market.

An order is open in riskd from the moment a pre-trade check accepts it
(:mod:`riskd.core.risk_gate`) until the gateway reports it cancelled or
filled.  Its **reservation** is the margin the check held for it: the
initial margin of the part that can open exposure plus its open loss
(``docs/engine.md``, "The risk gate").  A reservation is an amount kept
here; at decisions (the next check, margin leaving) the orders hold the
larger of it and their cost re-priced at the mark of the moment
(:func:`riskd.core.risk_gate.hold`), an amend re-checks the order and
replaces it.

A fill of ``q`` of an order of remaining quantity ``Q`` releases
``floor(margin × q / Q)``; the last fill releases the rest, so the released
parts sum to the reservation exactly and what stays reserved never rounds
down in the trader's favour.

Isolated margin: a reservation is held against the account's position in
this market (its isolated margin).  Cross margin will hold the same book per
account across the asset's markets; :meth:`OrderBook.reserved` is the one
figure it reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from mypy_extensions import mypyc_attr

from riskd.core.pickling import SlotsPickled, restore

__all__ = ["Order", "OrderBook", "BUY", "SELL"]

BUY: Final = 1
SELL: Final = -1


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class Order(SlotsPickled):
    """One open order: ``side`` +1 buy / -1 sell, ``quantity`` what is left to fill.

    ``leverage`` is the one the check priced it at (0: the tier's maximum),
    ``margin`` its reservation in settlement quantums.
    """

    __slots__ = (
        "order_id",
        "account",
        "side",
        "price",
        "quantity",
        "reduce_only",
        "post_only",
        "leverage",
        "margin",
    )

    def __init__(
        self,
        order_id: int,
        account: int,
        side: int,
        price: int,
        quantity: int,
        reduce_only: bool,
        post_only: bool,
        leverage: int,
        margin: int,
    ) -> None:
        self.order_id = order_id
        self.account = account
        self.side = side
        self.price = price
        self.quantity = quantity
        self.reduce_only = reduce_only
        self.post_only = post_only
        self.leverage = leverage
        self.margin = margin

    def __repr__(self) -> str:
        return (
            f"Order({self.order_id}, account={self.account}, side={self.side},"
            f" price={self.price}, quantity={self.quantity}, margin={self.margin})"
        )

    def canonical(self) -> str:
        return (
            f"O|{self.order_id}|{self.account}|{self.side}|{self.price}|{self.quantity}|"
            f"{int(self.reduce_only)}|{int(self.post_only)}|{self.leverage}|{self.margin}"
        )


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class OrderBook(SlotsPickled):
    """A market's open orders, with per-account totals kept exact as they change.

    ``opening[(account, side)]`` is the quantity of the account's open orders
    on ``side`` that are not reduce-only: what the gate adds up when it asks
    how large a position could become.  ``prices[(account, side)]`` bounds
    their prices ``(lowest, highest)``: it only widens while the side has
    orders (a cancel does not narrow it), which is all the gate's quick upper
    bound needs (:func:`riskd.core.risk_gate.decide`); it decides nothing, so
    a restart rebuilds it from the orders.
    """

    __slots__ = ("orders", "by_account", "reserved_by", "opening", "prices")

    def __init__(self) -> None:
        self.orders: dict[int, Order] = {}
        self.by_account: dict[int, set[int]] = {}
        self.reserved_by: dict[int, int] = {}
        self.opening: dict[tuple[int, int], int] = {}
        self.prices: dict[tuple[int, int], tuple[int, int]] = {}

    def __setstate__(self, state: object) -> None:
        restore(self, state)
        self.prices = {}
        for order in self.orders.values():
            if not order.reduce_only:
                self._widen(order)

    def __len__(self) -> int:
        return len(self.orders)

    def __iter__(self) -> Iterator[Order]:
        return iter(self.orders.values())

    def get(self, order_id: int) -> Order | None:
        return self.orders.get(order_id)

    def reserved(self, account: int) -> int:
        """Margin held for the account's open orders in this market."""
        return self.reserved_by.get(account, 0)

    def count(self, account: int) -> int:
        """How many orders the account has open in this market."""
        ids = self.by_account.get(account)
        return 0 if ids is None else len(ids)

    def price_range(self, account: int, side: int) -> tuple[int, int]:
        """``(lowest, highest)`` bounding the prices of the account's open, not
        reduce-only orders on ``side`` (``(0, 0)``: none)."""
        return self.prices.get((account, side), (0, 0))

    def open_quantity(self, account: int, side: int) -> int:
        """Quantity of the account's open, not reduce-only orders on ``side``."""
        return self.opening.get((account, side), 0)

    def of(self, account: int) -> list[Order]:
        """The account's open orders, by order id."""
        return [self.orders[i] for i in sorted(self.by_account.get(account, ()))]

    def add(self, order: Order) -> None:
        self.orders[order.order_id] = order
        self.by_account.setdefault(order.account, set()).add(order.order_id)
        self._count(order, 1)

    def remove(self, order_id: int) -> Order:
        """Close an order (cancelled, filled, replaced); its whole reservation is released."""
        order = self.orders.pop(order_id)
        self._count(order, -1)
        ids = self.by_account[order.account]
        ids.discard(order_id)
        if not ids:
            del self.by_account[order.account]
        return order

    def fill(self, order_id: int, quantity: int) -> int:
        """``quantity`` of the order filled; returns the margin released."""
        order = self.orders[order_id]
        if quantity >= order.quantity:
            return self.remove(order_id).margin
        released = order.margin * quantity // order.quantity
        self._count(order, -1)
        order.quantity -= quantity
        order.margin -= released
        self._count(order, 1)
        return released

    def drop_account(self, account: int) -> list[Order]:
        """Close every open order of the account (its position is being liquidated)."""
        return [self.remove(i) for i in sorted(self.by_account.get(account, ()))]

    def canonical(self) -> bytes:
        """The book as digest text, by order id."""
        return "".join(self.orders[i].canonical() + "\n" for i in sorted(self.orders)).encode()

    def _count(self, order: Order, sign: int) -> None:
        account = order.account
        total = self.reserved_by.get(account, 0) + sign * order.margin
        if total:
            self.reserved_by[account] = total
        else:
            self.reserved_by.pop(account, None)
        if order.reduce_only:
            return
        key = (account, order.side)
        qty = self.opening.get(key, 0) + sign * order.quantity
        if qty:
            self.opening[key] = qty
            if sign > 0:
                self._widen(order)
        else:
            self.opening.pop(key, None)
            self.prices.pop(key, None)

    def _widen(self, order: Order) -> None:
        key = (order.account, order.side)
        price = order.price
        lo, hi = self.prices.get(key, (price, price))
        self.prices[key] = (min(lo, price), max(hi, price))
