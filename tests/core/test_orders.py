"""Open orders' lives: fills release their reservations, cancels and amends, and what
a reservation holds back (margin out, the sweep of a closed position)."""

from __future__ import annotations

import pickle

from _kit import Desk, U, assert_rejected, btc_usdt_spec

from riskd.core import (
    AmendOrder,
    CancelOrder,
    CheckOrder,
    Code,
    Fill,
    MarginTransfer,
    OrderBook,
    OrderRefused,
    Refusal,
    digest,
)
from riskd.core.orders import Order

M = "BTC-USDT"
P = 5_000_000
ONE = 1_000
BUY, SELL = 1, -1


def desk() -> Desk:
    d = Desk(btc_usdt_spec())
    d.mark(M, P)
    return d


def book(d: Desk) -> OrderBook:
    return d.markets[M].orders


def test_partial_fills_release_pro_rata_rounded_against_the_trader() -> None:
    b = OrderBook()
    b.add(Order(1, 7, BUY, P, 3, False, False, 0, 10))
    assert b.fill(1, 1) == 3  # floor(10/3): 7 stays held for 2
    assert b.reserved(7) == 7 and b.open_quantity(7, BUY) == 2
    assert b.fill(1, 1) == 3  # floor(7/2)
    assert b.fill(1, 5) == 4  # the last fill releases the rest
    assert b.reserved(7) == 0 and len(b) == 0 and b.open_quantity(7, BUY) == 0


def test_a_fill_naming_its_orders_releases_them() -> None:
    d = desk()
    d.margin(1, M, 1_000 * U)
    d.margin(2, M, 1_000 * U)
    d.apply(CheckOrder(M, 11, 1, BUY, P, 1_000))
    d.apply(CheckOrder(M, 12, 2, SELL, P, 1_000))
    assert book(d).reserved(1) == book(d).reserved(2) == 500 * U
    d.apply(Fill(M, 1, 1, 2, P, 400, buyer_order_id=11, seller_order_id=12))
    assert book(d).reserved(1) == 300 * U and book(d).get(11).quantity == 600  # type: ignore[union-attr]
    assert d.markets[M].unreserved_fills == 0
    d.apply(Fill(M, 2, 1, 2, P, 600, buyer_order_id=11, seller_order_id=12))
    assert len(book(d)) == 0
    assert d.markets[M].unreserved_fills == 0
    d.check()


def test_a_fill_without_an_open_order_is_applied_and_counted() -> None:
    d = desk()
    d.margin(1, M, 1_000 * U)
    d.margin(2, M, 1_000 * U)
    d.apply(CheckOrder(M, 11, 1, BUY, P, 100))
    d.fill(M, 1, 2, P, 100)  # names no order
    assert d.markets[M].unreserved_fills == 1
    assert d.pos(M, 1).size == 100
    # naming another account's order does not touch it
    d.apply(Fill(M, 99, 2, 1, P, 10, buyer_order_id=11))
    assert book(d).get(11).quantity == 100  # type: ignore[union-attr]
    assert d.markets[M].unreserved_fills == 2


def test_cancel_releases_and_unknown_ids_are_not_found() -> None:
    d = desk()
    d.margin(1, M, 1_000 * U)
    d.apply(CheckOrder(M, 11, 1, BUY, P, 100))
    d.apply(CancelOrder(M, 11))
    assert book(d).reserved(1) == 0
    assert_rejected(d.engine, CancelOrder(M, 11), Code.NOT_FOUND, "order_id")
    assert_rejected(d.engine, AmendOrder(M, 11, P, 1), Code.NOT_FOUND, "order_id")


def test_amend_is_checked_again_and_refused_keeps_the_order() -> None:
    d = desk()
    d.margin(1, M, 100 * U)
    d.apply(CheckOrder(M, 11, 1, BUY, P, 100))  # 40 USDT
    d.apply(AmendOrder(M, 11, P, 250))  # 100 USDT: all of it
    assert book(d).reserved(1) == 100 * U
    before = digest(d.engine)
    try:
        d.apply(AmendOrder(M, 11, P, 251))
    except OrderRefused as r:
        assert r.reason is Refusal.INSUFFICIENT_BALANCE
    assert digest(d.engine) == before
    d.apply(AmendOrder(M, 11, P, 50))
    assert book(d).reserved(1) == 20 * U


def test_margin_out_keeps_reservations() -> None:
    d = desk()
    d.margin(1, M, 1_000 * U)
    d.apply(CheckOrder(M, 11, 1, BUY, P, 1_000))  # 500
    assert_rejected(d.engine, MarginTransfer(1, M, -501 * U), Code.FAILED_PRECONDITION, "amount")
    d.apply(MarginTransfer(1, M, -500 * U))
    assert d.pos(M, 1).margin == 500 * U


def test_closing_a_position_keeps_what_its_orders_reserve() -> None:
    d = desk()
    d.open(M, 1, 2, P, 100, 1_000 * U, 1_000 * U)
    d.apply(CheckOrder(M, 11, 1, BUY, P, 100))  # 40 USDT held
    d.fill(M, 2, 1, P, 100)  # account 1 sells: flat
    assert d.wallet("USDT", 1) == 960 * U
    assert d.pos(M, 1).size == 0 and d.pos(M, 1).margin == 40 * U
    d.apply(CancelOrder(M, 11))
    d.apply(MarginTransfer(1, M, -40 * U))
    assert d.pos(M, 1) is None
    d.check()


def test_a_liquidation_drops_the_accounts_orders() -> None:
    d = desk()
    d.inject("USDT", 100_000 * U)
    d.open(M, 1, 2, P, 1_000, 600 * U, 10_000 * U)
    d.apply(CheckOrder(M, 11, 1, BUY, P, 100))
    # 1.1 BTC reaches the 100x tier: 5,000 / 100, out of the 100 left above IM
    assert book(d).reserved(1) == 50 * U
    d.mark(M, 4_900_000)  # the long's 600 are gone below ~49,500
    assert book(d).reserved(1) == 0 and len(book(d)) == 0
    d.check()


def test_orders_survive_a_snapshot_and_replay_the_same() -> None:
    inputs = [
        CheckOrder(M, 11, 1, BUY, P, 300),
        CheckOrder(M, 12, 2, SELL, P, 200, post_only=True),
        AmendOrder(M, 11, P - 10, 250),
        Fill(M, 1, 1, 2, P, 100, buyer_order_id=11, seller_order_id=12),
    ]
    a, b = desk(), desk()
    for d in (a, b):
        d.margin(1, M, 1_000 * U)
        d.margin(2, M, 1_000 * U)
        for x in inputs:
            d.apply(x)
    assert digest(a.engine) == digest(b.engine)
    copy = pickle.loads(pickle.dumps(a.engine.markets[M]))
    assert book(a).canonical() == copy.orders.canonical()
    assert copy.orders.reserved(1) == book(a).reserved(1)


def test_a_snapshot_from_before_orders_reads_with_an_empty_book() -> None:
    d = desk()
    d.open(M, 1, 2, P, 100, 1_000 * U, 1_000 * U)
    m = d.markets[M]
    state = dict(m.__getstate__())  # as pickled (compiled or not)
    for name in ("orders", "open_interest", "unreserved_fills"):
        del state[name]
    fresh = m.__class__.__new__(m.__class__)
    fresh.__setstate__(state)
    assert len(fresh.orders) == 0 and fresh.open_interest == 100
