"""The pre-trade check: each refusal reason, the cost formula, and that margin is never spent twice.

BTC-USDT (linear, DOMAIN.md §3 tiers: 125x below 50,000 USDT notional, 100x
up to 250,000): 1 BTC is quantity 1,000, 50,000 USDT is price 5,000,000.
"""

from __future__ import annotations

import dataclasses

import pytest
from _kit import BTC, Desk, U, assert_rejected, btc_usd_spec, btc_usdt_spec
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.core import (
    CheckOrder,
    Code,
    Deposit,
    Fill,
    MarketSpec,
    OrderRefused,
    Refusal,
    digest,
)
from riskd.core.market_status import MarketStatus
from riskd.core.risk_gate import available

M = "BTC-USDT"
P = 5_000_000  # 50,000 USDT
ONE = 1_000  # 1 BTC
BUY, SELL = 1, -1


def desk(**kw: object) -> Desk:
    d = Desk(btc_usdt_spec(**kw))
    d.mark(M, P)
    return d


def check(
    d: Desk,
    order_id: int,
    account: int,
    side: int,
    price: int,
    qty: int,
    *,
    reduce_only: bool = False,
    leverage: int = 0,
) -> None:
    d.apply(CheckOrder(M, order_id, account, side, price, qty, reduce_only, False, leverage))


def refused(d: Desk, c: CheckOrder, reason: Refusal, field: str) -> OrderRefused:
    code = Code.NOT_FOUND if reason is Refusal.UNKNOWN_ACCOUNT else Code.FAILED_PRECONDITION
    r = assert_rejected(d.engine, c, code, field)
    assert isinstance(r, OrderRefused) and r.reason is reason, r
    return r


def reserved(d: Desk, account: int) -> int:
    return d.markets[M].orders.reserved(account)


def test_the_issues_5000x_order_is_refused() -> None:
    """10 USDT cannot buy 1 BTC at 50,000: it needs 500 (100x for that notional)."""
    d = desk()
    d.margin(1, M, 10 * U)
    r = refused(d, CheckOrder(M, 1, 1, BUY, P, ONE), Refusal.INSUFFICIENT_BALANCE, "quantity")
    assert "needs 500000000" in r.message
    # at 125x (the first tier's) it is above what 50,000 of notional allows
    refused(
        d, CheckOrder(M, 1, 1, BUY, P, ONE, leverage=125), Refusal.LEVERAGE_ABOVE_TIER, "leverage"
    )


def test_exact_cost_is_reserved_and_cannot_be_spent_twice() -> None:
    d = desk()
    d.margin(1, M, 500 * U)
    check(d, 1, 1, BUY, P, ONE)
    assert reserved(d, 1) == 500 * U
    refused(d, CheckOrder(M, 2, 1, BUY, P, 1), Refusal.INSUFFICIENT_BALANCE, "quantity")
    refused(d, CheckOrder(M, 2, 1, SELL, P, 1), Refusal.INSUFFICIENT_BALANCE, "quantity")
    # the same check again (a retry) is the same order: nothing more reserved
    check(d, 1, 1, BUY, P, ONE)
    assert reserved(d, 1) == 500 * U
    assert_rejected(
        d.engine, CheckOrder(M, 1, 1, BUY, P, 999), Code.FAILED_PRECONDITION, "order_id"
    )


def test_open_loss_buy_above_and_sell_below_the_mark() -> None:
    d = desk()
    d.margin(1, M, 1_000 * U)
    # buy 0.1 at 51,000: IM on 5,100 at 125x = 40.8, open loss 100
    check(d, 1, 1, BUY, 5_100_000, 100)
    assert reserved(d, 1) == 140_800_000
    # sell 0.1 at 49,000: IM on 5,000 (the mark's is larger) = 40, open loss 100
    check(d, 2, 1, SELL, 4_900_000, 100)
    assert reserved(d, 1) == 140_800_000 + 140 * U


def test_leverage_chosen_below_the_tier_costs_more() -> None:
    d = desk()
    d.margin(1, M, 1_000 * U)
    check(d, 1, 1, BUY, P, 100, leverage=10)  # 5,000 / 10
    assert reserved(d, 1) == 500 * U


def test_reduce_only() -> None:
    d = desk()
    d.open(M, 1, 2, P, ONE, 1_000 * U, 1_000 * U)
    check(d, 1, 1, SELL, P, ONE, reduce_only=True)
    assert reserved(d, 1) == 0
    refused(d, CheckOrder(M, 2, 1, BUY, P, 1, True), Refusal.REDUCE_ONLY, "reduce_only")
    refused(d, CheckOrder(M, 2, 1, SELL, P, ONE + 1, True), Refusal.REDUCE_ONLY, "reduce_only")


def test_an_order_that_reduces_reserves_only_what_it_opens() -> None:
    d = desk()
    d.open(M, 1, 2, P, ONE, 1_000 * U, 1_000 * U)
    check(d, 1, 1, SELL, P, ONE)  # closes the long: opens nothing
    assert reserved(d, 1) == 0
    check(d, 2, 1, SELL, P, 100)  # the long is spoken for: this one opens a short
    assert reserved(d, 1) == 40 * U


def test_position_limit_counts_open_orders() -> None:
    d = desk(max_position_notional=60_000 * U)
    d.open(M, 1, 2, P, ONE, 2_000 * U, 2_000 * U)
    check(d, 1, 1, BUY, P, 100)
    check(d, 2, 1, BUY, P, 100)  # 1.2 BTC = 60,000: at the limit
    refused(d, CheckOrder(M, 3, 1, BUY, P, 1), Refusal.POSITION_LIMIT, "quantity")


def test_open_interest_cap() -> None:
    d = desk(open_interest_cap=1_500)
    d.open(M, 1, 2, P, ONE, 2_000 * U, 2_000 * U)
    d.margin(3, M, 2_000 * U)
    refused(d, CheckOrder(M, 1, 3, BUY, P, 501), Refusal.OPEN_INTEREST_CAP, "quantity")
    check(d, 1, 3, BUY, P, 500)
    check(d, 2, 1, SELL, P, ONE)  # reduces: adds no open interest


def test_price_band() -> None:
    d = desk(order_price_band_ppm=50_000)
    d.margin(1, M, 1_000 * U)
    refused(d, CheckOrder(M, 1, 1, BUY, 5_250_010, 1), Refusal.PRICE_BAND, "price")
    refused(d, CheckOrder(M, 1, 1, SELL, 4_749_990, 1), Refusal.PRICE_BAND, "price")
    check(d, 1, 1, BUY, 5_250_000, 1)
    check(d, 2, 1, SELL, 4_750_000, 1)


def test_unknown_account_and_no_mark() -> None:
    d = Desk(btc_usdt_spec())
    d.margin(1, M, 1_000 * U)
    refused(d, CheckOrder(M, 1, 1, BUY, P, 1), Refusal.NO_MARK, "market")
    d.mark(M, P)
    refused(d, CheckOrder(M, 1, 7, BUY, P, 1), Refusal.UNKNOWN_ACCOUNT, "account")


def test_halted_and_close_only_markets() -> None:
    d = desk()
    d.open(M, 1, 2, P, ONE, 1_000 * U, 1_000 * U)
    d.markets[M].status = MarketStatus.HALTED
    refused(d, CheckOrder(M, 1, 1, SELL, P, 1), Refusal.MARKET_HALTED, "market")
    d.markets[M].status = MarketStatus.CLOSE_ONLY
    refused(d, CheckOrder(M, 1, 1, BUY, P, 1), Refusal.MARKET_CLOSE_ONLY, "market")
    check(d, 1, 1, SELL, P, ONE)  # closes: allowed, reserves nothing
    assert reserved(d, 1) == 0 and d.markets[M].orders.get(1).reduce_only  # type: ignore[union-attr]


def test_a_guarded_market_checks_against_the_last_good_mark() -> None:
    d = desk(order_price_band_ppm=10_000)
    d.margin(1, M, 1_000 * U)
    m = d.markets[M]
    assert m.guard_mark == P
    m.mark = 2 * P  # a mark the guard did not accept
    m.guard.good_mark = P
    m.guard.reason = m.guard.reason or _any_reason()
    check(d, 1, 1, BUY, P, 1)  # within 1 % of the good mark, not of the bad one


def _any_reason() -> object:
    from riskd.core.mark_guard import GuardReason

    return GuardReason.JUMP


def test_malformed_orders_name_the_field() -> None:
    d = desk()
    d.margin(1, M, 1_000 * U)
    for c, field in [
        (CheckOrder(M, 0, 1, BUY, P, 1), "order_id"),
        (CheckOrder(M, 2**64, 1, BUY, P, 1), "order_id"),
        (CheckOrder(M, 1, 0, BUY, P, 1), "account"),
        (CheckOrder(M, 1, 1, 0, P, 1), "side"),
        (CheckOrder(M, 1, 1, BUY, P + 1, 1), "price"),
        (CheckOrder(M, 1, 1, BUY, P, 0), "quantity"),
        (CheckOrder(M, 1, 1, BUY, P, 1, leverage=-1), "leverage"),
    ]:
        assert_rejected(d.engine, c, Code.INVALID_ARGUMENT, field)


def test_inverse_market_cost() -> None:
    spec = btc_usd_spec()
    d = Desk(spec)
    d.mark("BTC-USD", 500_000)  # 50,000 USD
    d.margin(1, "BTC-USD", BTC)
    # 100 contracts of 100 USD = 10,000 USD = 0.2 BTC; at 100x: 0.002 BTC
    d.apply(CheckOrder("BTC-USD", 1, 1, BUY, 500_000, 100))
    assert d.markets["BTC-USD"].orders.reserved(1) == 200_000
    # buying below the mark: the notional is larger at the lower price
    d.apply(CheckOrder("BTC-USD", 2, 1, BUY, 400_000, 100))
    assert d.markets["BTC-USD"].orders.reserved(1) == 200_000 + 250_000


ORDERS = st.lists(
    st.tuples(
        st.sampled_from([BUY, SELL]),
        st.integers(min_value=4_500_000 // 10, max_value=5_500_000 // 10).map(lambda p: p * 10),
        st.integers(min_value=1, max_value=3_000),
        st.sampled_from([0, 1, 5, 20, 100, 125]),
        st.booleans(),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(
    orders=ORDERS,
    margin=st.integers(min_value=1, max_value=3_000),
    long=st.integers(0, 1_500),
    marks=st.lists(st.integers(4_500_000, 5_500_000).map(lambda p: p // 10 * 10), max_size=12),
    descending=st.booleans(),
)
def test_two_orders_never_spend_the_same_margin(
    orders: list[tuple[int, int, int, int, bool]],
    margin: int,
    long: int,
    marks: list[int],
    descending: bool,
) -> None:
    """After every accepted check that may add to the position the account's orders,
    re-priced at the mark of the moment, fit its available margin, whatever the
    marks did in between and in whichever order the ids come; a refused one
    changes nothing."""
    d = desk()
    d.margin(1, M, margin * U)
    d.margin(2, M, 10_000 * U)
    if long:
        d.fill(M, 1, 2, P, long) if margin * U * 100 >= long * P * 10 else None
    m = d.markets[M]
    mark = P
    for i, (side, price, qty, leverage, ro) in enumerate(orders, start=1):
        if i <= len(marks):
            mark = marks[i - 1]
            d.mark(M, mark)
            if 1 not in m.positions or m.positions[1].liquidation:
                return  # liquidated by the move: no more checks to make
        oid = 100 - i if descending else i
        before = digest(d.engine)
        try:
            d.apply(CheckOrder(M, oid, 1, side, price, qty, ro, False, leverage))
        except OrderRefused:
            assert digest(d.engine) == before
            continue
        assert m.held(1) >= m.orders.reserved(1)
        accepted = m.orders.get(oid)
        if accepted is not None and not accepted.reduce_only:  # reducing needs no margin
            assert available(m.spec, m.positions[1], mark, m.held(1)) >= 0
    d.check()


def test_a_mark_that_moves_against_orders_holds_more_at_the_next_decision() -> None:
    """Buy 1 BTC at 50,000 with 600 USDT: it reserves 500 (100x), 100 stay free.  At a
    mark of 55,000 the order is worth 550 of initial margin: only 50 may leave or be
    committed.  At 45,000 it would fill 5,000 under water: nothing is free.  Back at
    50,000 the reservation is what it holds again."""
    from riskd.core import MarginTransfer

    d = desk()
    d.margin(1, M, 600 * U)
    check(d, 1, 1, BUY, P, ONE)
    m = d.markets[M]
    assert (reserved(d, 1), m.held(1)) == (500 * U, 500 * U)
    d.mark(M, 5_500_000)
    assert (reserved(d, 1), m.held(1)) == (500 * U, 550 * U)  # the amount stays, it holds more
    assert_rejected(d.engine, MarginTransfer(1, M, -51 * U), Code.FAILED_PRECONDITION, "amount")
    # 0.1 BTC more at 55,000 needs 55 (100x) of the 50 left
    r = refused(
        d, CheckOrder(M, 2, 1, BUY, 5_500_000, 100), Refusal.INSUFFICIENT_BALANCE, "quantity"
    )
    assert "50000000 available" in r.message
    d.mark(M, 4_500_000)
    assert m.held(1) == 500 * U + 5_000 * U  # IM at the order's price, and the open loss
    assert_rejected(d.engine, MarginTransfer(1, M, -1), Code.FAILED_PRECONDITION, "amount")
    d.mark(M, P)
    assert m.held(1) == 500 * U
    d.apply(MarginTransfer(1, M, -100 * U))
    d.check()


def test_re_pricing_nets_the_book_whatever_the_ids() -> None:
    """Two buys that add up to the same exposure hold the same whichever was checked first."""
    a, b = desk(), desk()
    for d, ids in ((a, (1, 2)), (b, (2, 1))):
        d.margin(1, M, 1_000 * U)
        check(d, ids[0], 1, BUY, P, 500)
        check(d, ids[1], 1, BUY, P, 500)
        d.mark(M, 5_200_000)
    assert a.markets[M].held(1) == b.markets[M].held(1) == 520 * U


@pytest.mark.parametrize("spec", [btc_usdt_spec(), btc_usd_spec()])
def test_gate_settings_are_range_checked(spec: MarketSpec) -> None:
    from riskd.core import SpecError

    for name in ("order_price_band_ppm", "open_interest_cap", "max_position_notional"):
        with pytest.raises(SpecError) as e:
            dataclasses.replace(spec, **{name: -1})
        assert e.value.field == name
    assert spec.max_open_orders == 200
    for bad in (0, -1, 100_001):
        with pytest.raises(SpecError) as e:
            dataclasses.replace(spec, max_open_orders=bad)
        assert e.value.field == "max_open_orders"


def test_open_orders_per_account_are_bounded() -> None:
    """A gateway that checks and never cancels stops at max_open_orders; amends,
    retries and other accounts are not counted against it; a cancel or a fill frees one."""
    from riskd.core import AmendOrder, CancelOrder

    d = desk(max_open_orders=3)
    d.margin(1, M, 1_000 * U)
    d.margin(2, M, 1_000 * U)
    for i in (1, 2):
        check(d, i, 1, BUY, P, 10)
    check(d, 3, 1, SELL, P, 10, reduce_only=False)
    check(d, 3, 1, SELL, P, 10)  # a retried check is the same order, not a fourth
    r = refused(d, CheckOrder(M, 4, 1, BUY, P, 10), Refusal.TOO_MANY_ORDERS, "order_id")
    assert "3 open orders" in r.message
    d.apply(AmendOrder(M, 1, P, 20))  # an amend keeps the count
    check(d, 5, 2, BUY, P, 10)  # another account has its own
    d.apply(CancelOrder(M, 2))
    check(d, 4, 1, BUY, P, 10)
    refused(d, CheckOrder(M, 6, 1, BUY, P, 10), Refusal.TOO_MANY_ORDERS, "order_id")
    d.margin(3, M, 1_000 * U)
    d.apply(Fill(M, 1, 1, 3, P, 20, buyer_order_id=1))  # filled whole: no longer open
    check(d, 6, 1, BUY, P, 10)
    assert d.markets[M].orders.count(1) == 3
    d.check()


def test_cross_orders_share_the_wallet_and_hold_it() -> None:
    """A cross account's orders in two markets draw on one wallet: what one reserves
    the other cannot, withdrawals leave it, and the mode cannot change under them."""
    from riskd.core import CancelOrder, SetMarginMode, Withdrawal

    d = Desk(btc_usdt_spec(), btc_usdt_spec("ETH-USDT"))
    for m in (M, "ETH-USDT"):
        d.mark(m, P)
        d.apply(SetMarginMode(m, 1, True))
    d.apply(Deposit(1, "USDT", 1_000 * U))
    d.apply(CheckOrder(M, 1, 1, BUY, P, ONE))  # 500 of the wallet
    d.apply(CheckOrder("ETH-USDT", 2, 1, SELL, P, ONE))  # the other 500
    assert reserved(d, 1) == 500 * U and d.markets["ETH-USDT"].orders.reserved(1) == 500 * U
    refused(d, CheckOrder("ETH-USDT", 3, 1, BUY, P, 1), Refusal.INSUFFICIENT_BALANCE, "quantity")
    refused(d, CheckOrder(M, 3, 1, BUY, P, 1), Refusal.INSUFFICIENT_BALANCE, "quantity")
    assert_rejected(d.engine, Withdrawal(1, "USDT", 1), Code.FAILED_PRECONDITION, "amount")
    assert_rejected(d.engine, SetMarginMode(M, 1, False), Code.FAILED_PRECONDITION, "cross")
    d.apply(CancelOrder(M, 1))
    d.apply(Withdrawal(1, "USDT", 500 * U))
    assert_rejected(d.engine, Withdrawal(1, "USDT", 1), Code.FAILED_PRECONDITION, "amount")
    # the ETH order fills: its reservation is released, the position takes its IM
    d.margin(2, "ETH-USDT", 1_000 * U)
    d.apply(Fill("ETH-USDT", 1, 2, 1, P, ONE, seller_order_id=2))
    assert d.markets["ETH-USDT"].orders.reserved(1) == 0
    d.check()


@settings(max_examples=100, deadline=None)
@given(
    inverse=st.booleans(),
    size=st.integers(-3_000, 3_000),
    mark=st.integers(1_000, 9_000_000),
    orders=st.lists(
        st.tuples(
            st.sampled_from([BUY, SELL]),
            st.integers(1_000, 9_000_000),
            st.integers(1, 3_000),
            st.sampled_from([0, 1, 3, 125]),
            st.integers(0, 10**9),
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_the_quick_bound_is_never_below_the_walk(
    inverse: bool, size: int, mark: int, orders: list[tuple[int, int, int, int, int]]
) -> None:
    """The gate answers a well-funded account from an O(1) upper bound: it must bound
    the exact re-priced figure on both contract types, whatever the book."""
    from riskd.core.orders import Order, OrderBook
    from riskd.core.risk_gate import _bound, hold

    spec = btc_usd_spec() if inverse else btc_usdt_spec()
    book = OrderBook()
    made = [
        Order(i, 1, side, price // 10 * 10 or 10, qty, False, False, lev, margin)
        for i, (side, price, qty, lev, margin) in enumerate(orders, start=1)
    ]
    *rest, last = made
    for o in rest:
        book.add(o)
    exact = hold(spec, size, sorted(made, key=lambda o: o.order_id), mark)
    assert _bound(spec, book, last, mark) >= exact
