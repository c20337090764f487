"""The pre-trade decision: may this order rest on the book, and what does it reserve?

One pure function, :func:`decide`, over one market's state; the market
applies what it answers (:meth:`riskd.core.market_engine.MarketEngine.check_order`).
Checks, in this order, the first that fails refuses the order with its
:class:`Refusal` (``docs/engine.md``, "The risk gate"):

1. the market takes orders (not halted or settled) and has a mark (the
   mark-price guard's last good one while it is guarded);
2. the price is within ``order_price_band_ppm`` of that mark;
3. the account holds isolated margin in the market and is not being
   liquidated; a new order (not an amend) finds it with fewer than
   ``max_open_orders`` open here;
4. reduce-only (an order flagged so, or any order in a close-only or
   reduce-only market): opposite to the position and no larger than it;
5. otherwise, with ``E`` the largest position the account could reach on the
   order's side (its position, its other open orders on that side and this
   one, netted) and ``O`` the part of this order that adds to it:
   the notional of ``E`` within ``max_position_notional``; the market's open
   interest plus ``O`` within ``open_interest_cap``; the order's leverage
   within the tier of ``E``'s notional;
6. its cost ``IM(O) + open loss`` within the position's available margin
   ``M + min(u, 0) − IM(position) − held``, where ``held`` is what the
   account's other orders hold re-priced at the mark (:func:`hold`; with this
   order among them, the whole must fit).

Prices are exact integers; notionals are taken at whichever of the order
price and the mark makes them larger (the buy-above-mark and inverse cases
alike) and rounded up, the margin of ``O`` is its notional over the leverage
rounded up, and the open loss (what filling at the order price loses against
the mark at once) rounded up: every rounding is against the trader.
"""

from __future__ import annotations

import bisect
import enum

from mypy_extensions import mypyc_attr

from riskd.core.errors import Code, Rejected
from riskd.core.margin import initial_margin, unrealised
from riskd.core.market import ContractType, MarketSpec
from riskd.core.market_status import MarketStatus
from riskd.core.orders import Order, OrderBook
from riskd.core.position import Position
from riskd.core.units import PPM, ceil_div

__all__ = ["Refusal", "OrderRefused", "decide", "available", "hold"]


class Refusal(enum.Enum):
    """Why a pre-trade check refused an order (the wire's ``OrderRefusal``)."""

    INSUFFICIENT_BALANCE = "insufficient_balance"
    LEVERAGE_ABOVE_TIER = "leverage_above_tier"
    POSITION_LIMIT = "position_limit"
    OPEN_INTEREST_CAP = "open_interest_cap"
    REDUCE_ONLY = "reduce_only"
    MARKET_HALTED = "market_halted"
    MARKET_CLOSE_ONLY = "market_close_only"
    PRICE_BAND = "price_band"
    UNKNOWN_ACCOUNT = "unknown_account"
    NO_MARK = "no_mark"
    IN_LIQUIDATION = "in_liquidation"
    TOO_MANY_ORDERS = "too_many_orders"


# Not compiled, as Rejected (riskd.core.errors): an exception over a Python base.
@mypyc_attr(native_class=False)
class OrderRefused(Rejected):
    """A well-formed order the gate refuses; ``reason`` says which check failed."""

    def __init__(self, reason: Refusal, field: str, message: str) -> None:
        code = Code.NOT_FOUND if reason is Refusal.UNKNOWN_ACCOUNT else Code.FAILED_PRECONDITION
        super().__init__(code, field, message)
        self.reason = reason


def _notional(spec: MarketSpec, qty: int, price: int) -> int:
    num, den = spec.notional(qty, price)
    return ceil_div(num, den)


def _cost(
    spec: MarketSpec, side: int, q: int, price: int, opening: int, leverage: int, mark: int
) -> tuple[int, int]:
    """``(IM, open loss)`` of an order of ``q`` at ``price`` of which ``opening`` adds to
    the position, at ``mark``; both rounded up."""
    im = ceil_div(max(_notional(spec, opening, price), _notional(spec, opening, mark)), leverage)
    num, den = spec.value(side * q, mark)
    loss = max(0, -((num - spec.side_value(side * q, price) * den) // den))
    return im, loss


def _dearest(spec: MarketSpec, price: int, mark: int) -> int:
    """Whichever of ``price`` and ``mark`` makes a notional larger (the higher one on a
    linear market, the lower on an inverse one)."""
    if spec.contract_type is ContractType.LINEAR:
        return price if price > mark else mark
    return price if price < mark else mark


def hold(spec: MarketSpec, size: int, orders: list[Order], mark: int) -> int:
    """What one account's open ``orders`` here (by order id) hold at ``mark``, its
    position being ``size``: each order the larger of its reservation and its cost
    re-priced at ``mark``.

    The re-pricing is the check's formula with the book as it is now: on each
    side the orders, by id, open what the position and the earlier ones leave
    to open, at the tier of the largest notional that side could reach (at the
    dearest of its prices and the mark).  A reservation is a floor (fills
    release it pro rata); the re-priced cost is what a venue would hold now,
    so a mark that moved against the orders holds more at the next decision,
    never less than was reserved.  O(len(orders)).
    """
    # Pass 1: how far each side could reach, and its dearest price.
    buy_qty = sell_qty = 0
    buy_price = sell_price = mark
    for o in orders:
        if o.reduce_only:
            continue
        if o.side > 0:
            buy_qty += o.quantity
            buy_price = _dearest(spec, o.price, buy_price)
        else:
            sell_qty += o.quantity
            sell_price = _dearest(spec, o.price, sell_price)
    tiers = spec.tiers
    buy_most = tiers.tier_for(_notional(spec, max(0, size + buy_qty), buy_price)).max_leverage
    sell_most = tiers.tier_for(_notional(spec, max(0, sell_qty - size), sell_price)).max_leverage
    # Pass 2: each order's opening part, by id, and its cost at the mark.
    bought = sold = 0  # the side's quantity of earlier orders
    total = 0
    for o in orders:
        if o.reduce_only:
            total += o.margin
            continue
        q = o.quantity
        if o.side > 0:
            base = size + bought
            bought += q
            most = buy_most
        else:
            base = sold - size
            sold += q
            most = sell_most
        opening = max(0, base + q) - max(0, base)
        leverage = o.leverage if 0 < o.leverage < most else most
        im = (
            ceil_div(_notional(spec, opening, _dearest(spec, o.price, mark)), leverage)
            if opening
            else 0
        )
        num, den = spec.value(o.side * q, mark)
        loss = max(0, -((num - spec.side_value(o.side * q, o.price) * den) // den))
        cost = im + loss
        total += cost if cost > o.margin else o.margin
    return total


def available(spec: MarketSpec, pos: Position, mark: int, reserved: int) -> int:
    """Margin the position can still commit: ``M + min(u, 0) − IM − reserved`` at ``mark``."""
    free = pos.margin - reserved
    if pos.size:
        free += min(unrealised(spec, pos, mark), 0) - initial_margin(spec, pos, mark)
    return free


def decide(
    spec: MarketSpec,
    status: MarketStatus,
    mark: int | None,
    pos: Position | None,
    book: OrderBook,
    open_interest: int,
    order: Order,
    replacing: Order | None = None,
    cross_free: int | None = None,
) -> tuple[int, bool]:
    """``(reservation, reduce_only)`` for a well-formed ``order``, or :class:`OrderRefused`.

    ``replacing``: the open order an amend replaces (its quantity and
    reservation are left out of the account's totals).  ``reduce_only`` is
    true when the order may only reduce (flagged so, or the market is
    close-only): it then reserves nothing.  ``cross_free``: for an account
    in cross margin here, what its cross wallet can still commit before this
    market's orders (:func:`riskd.core.cross_margin.available` less what its
    orders in the asset's other markets reserve); None: isolated.
    """
    account, side, q = order.account, order.side, order.quantity
    if status is MarketStatus.HALTED or status is MarketStatus.SETTLED:
        raise OrderRefused(
            Refusal.MARKET_HALTED, "market", f"{spec.symbol} is {status.value}: no new orders"
        )
    if mark is None:
        raise OrderRefused(
            Refusal.NO_MARK,
            "market",
            f"{spec.symbol} has no mark price yet to check orders against",
        )
    band = spec.order_price_band_ppm
    if band and abs(order.price - mark) * PPM > band * mark:
        raise OrderRefused(
            Refusal.PRICE_BAND,
            "price",
            f"{order.price} is more than {band} ppm from the mark {mark}",
        )
    if pos is None and cross_free is not None:
        pos = Position(account)  # a cross account's first position here
    if pos is None:
        raise OrderRefused(
            Refusal.UNKNOWN_ACCOUNT,
            "account",
            f"account {account} has no isolated margin in {spec.symbol}: transfer margin in first",
        )
    if pos.liquidation:
        raise OrderRefused(
            Refusal.IN_LIQUIDATION, "account", f"account {account} is being liquidated"
        )
    if replacing is None and book.count(account) >= spec.max_open_orders:
        raise OrderRefused(
            Refusal.TOO_MANY_ORDERS,
            "order_id",
            f"account {account} already has {spec.max_open_orders} open orders in"
            f" {spec.symbol} (max_open_orders): cancel one first",
        )
    close_only = status is MarketStatus.CLOSE_ONLY or spec.reduce_only
    if order.reduce_only or close_only:
        if pos.size * side >= 0 or q > abs(pos.size):
            if order.reduce_only:
                raise OrderRefused(
                    Refusal.REDUCE_ONLY,
                    "reduce_only",
                    f"a reduce-only order must be opposite to the position ({pos.size})"
                    f" and no larger than it, got side {side} quantity {q}",
                )
            raise OrderRefused(
                Refusal.MARKET_CLOSE_ONLY,
                "market",
                f"{spec.symbol} is close-only: only orders that reduce a position",
            )
        return 0, True
    same_side = book.open_quantity(account, side)
    if replacing is not None and not replacing.reduce_only and replacing.side == side:
        same_side -= replacing.quantity
    before = max(0, side * pos.size + same_side)
    after = max(0, side * pos.size + same_side + q)
    opening = after - before
    largest = max(_notional(spec, after, order.price), _notional(spec, after, mark))
    limit = spec.max_position_notional
    if limit and largest > limit:
        raise OrderRefused(
            Refusal.POSITION_LIMIT,
            "quantity",
            f"the position could reach a notional of {largest}, above the limit {limit}",
        )
    cap = spec.open_interest_cap
    if cap and open_interest + opening > cap:
        raise OrderRefused(
            Refusal.OPEN_INTEREST_CAP,
            "quantity",
            f"{spec.symbol}'s open interest {open_interest} plus {opening} would exceed"
            f" its cap {cap}",
        )
    most = spec.tiers.tier_for(largest).max_leverage
    leverage = order.leverage or most
    if leverage > most:
        raise OrderRefused(
            Refusal.LEVERAGE_ABOVE_TIER,
            "leverage",
            f"{leverage}x is above the {most}x the tier allows for a notional of {largest}",
        )
    im, loss = _cost(spec, side, q, order.price, opening, leverage, mark)
    cost = im + loss
    # The account's orders here with this one, re-priced at the mark (hold), must
    # fit: what is accepted never leaves the margin over-committed.
    # The cross wallet's figure already counts every cross position's IM.
    base = available(spec, pos, mark, 0) if cross_free is None else cross_free
    if not book.count(account):
        fits, others, mine = cost <= base, [], []
    else:
        order.margin = cost
        if _bound(spec, book, order, mark) <= base:
            return cost, False  # the walk could only find that it fits: skipped
        others = book.of(account)
        if replacing is not None:
            others.remove(replacing)
        mine = list(others)
        bisect.insort(mine, order, key=_by_id)
        fits = hold(spec, pos.size, mine, mark) <= base
    if not fits:
        held = hold(spec, pos.size, others, mark)
        needs = (hold(spec, pos.size, mine, mark) if others else cost) - held
        free = base - held
        raise OrderRefused(
            Refusal.INSUFFICIENT_BALANCE,
            "quantity",
            f"the order needs {needs} (initial margin {im}, open loss {loss}, and what the"
            f" account's other orders hold more with it) but account {account} has"
            f" {max(free, 0)} available in {spec.symbol}",
        )
    return cost, False


def _bound(spec: MarketSpec, book: OrderBook, order: Order, mark: int) -> int:
    """An upper bound, in O(1), of what the account's orders hold at ``mark`` with
    ``order`` (its margin set) among them (:func:`hold`).

    Each order holds at most its reservation plus its re-priced cost, and that
    cost (IM at leverage >= 1, plus open loss) is at most three times its
    notional at the dearest of its side's prices and the mark, plus a quantum
    or three of rounding: a well-funded account is answered without the walk,
    with the answer the walk would give.
    """
    account = order.account
    total = book.reserved(account) + order.margin + 6 * (book.count(account) + 1)
    for side in (1, -1):
        qty = book.open_quantity(account, side)
        lo, hi = book.price_range(account, side)
        if side == order.side:
            qty += order.quantity
            lo, hi = (order.price, order.price) if not lo else (lo, hi)
            lo, hi = min(lo, order.price), max(hi, order.price)
        if qty:
            dear = _dearest(spec, hi if spec.contract_type is ContractType.LINEAR else lo, mark)
            total += 3 * _notional(spec, qty, dear)
    return total


def _by_id(order: Order) -> int:
    return order.order_id
