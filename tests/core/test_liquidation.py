"""Liquidation through the engine: takeover and book modes, fund limits, ADL fallback.

Numbers: a long of 0.02 BTC @ 50,000 with 500 USDT margin has bankruptcy price
25,000 and (MMR 0.4 %) liquidation price 25,100.40 (DOMAIN.md §3 "Binance LP").
Crashing the mark to P leaves it ``R = 500 + 0.02 (P - 50,000)``.
"""

from __future__ import annotations

import pytest
from _kit import (
    BTC,
    Desk,
    U,
    assert_rejected,
    btc_usd_spec,
    btc_usdt_spec,
    of_type,
    usdt,
)

from riskd.core import (
    BACKSTOP_ACCOUNT,
    AdlEvent,
    AdlNotice,
    AdlReason,
    Code,
    Deposit,
    Fill,
    FundFlow,
    FundKind,
    LiquidationDone,
    LiquidationFill,
    LiquidationMode,
    LiquidationOrder,
    LiquidationSettled,
    MarginTransfer,
    Position,
    TierTable,
    violations,
)
from riskd.core.liquidation import Stage, takeover_result
from riskd.core.liquidation_index import LiquidationIndex
from riskd.core.market import PartialLiquidation, SpecError, TakeoverPrice

M = "BTC-USDT"


def long_vs_short(
    d: Desk, market: str = M, long_margin: int = 500 * U, short_margin: int = 5_000 * U
) -> None:
    """Account 1 long 0.02 @ 50,000 against account 2 short; mark at 50,000."""
    d.open(market, 1, 2, usdt("50000"), 20, long_margin, short_margin)
    d.mark(market, usdt("50000"))


def ledger_kinds(d: Desk, asset: str = "USDT") -> list[tuple[FundKind, int]]:
    return [(e.kind, e.amount) for e in d.funds[asset].ledger]


# --- takeover mode ----------------------------------------------------------------


def test_trigger_is_the_mark_not_the_last_trade() -> None:
    d = Desk(btc_usdt_spec())
    long_vs_short(d)
    d.open(M, 3, 4, usdt("20000"), 1, 100 * U, 100 * U)  # a trade far below 1's LP
    assert d.pos(M, 1).liquidation == 0 and d.pos(M, 1).size == 20
    d.check()


def test_takeover_fund_covers_shortfall_and_backstop_takes_over() -> None:
    d = Desk(btc_usdt_spec())
    d.inject("USDT", 10_000 * U)
    long_vs_short(d)
    out = d.mark(M, usdt("24000"))  # R = 500 - 520 = -20
    [settled] = of_type(out, LiquidationSettled)
    assert (settled.account, settled.quantity, settled.price) == (1, 20, usdt("24000"))
    assert (settled.fund_delta, settled.returned_to_trader, settled.adl_quantity) == (-20 * U, 0, 0)
    assert of_type(out, AdlEvent) == []
    # The fund pays the shortfall and grants the backstop its initial margin (480/125).
    assert ledger_kinds(d)[1:] == [
        (FundKind.SHORTFALL, -20 * U),
        (FundKind.BACKSTOP_MARGIN, -3_840_000),
    ]
    assert [f.balance_after for f in of_type(out, FundFlow)] == [9_980 * U, 9_976_160_000]
    bs = d.pos(M, BACKSTOP_ACCOUNT)
    assert (bs.size, bs.basis, bs.margin) == (20, 480 * U, 3_840_000)
    assert d.pos(M, 1) is None and d.wallet("USDT", 1) == 0
    v = d.markets[M].view(BACKSTOP_ACCOUNT)
    # The backstop is indexed at its bankruptcy price: 24,000 - 3.84/0.02.
    assert v.liquidation_price == v.bankruptcy_price == usdt("23808")
    d.check()


def test_takeover_of_a_short() -> None:
    d = Desk(btc_usdt_spec())
    d.inject("USDT", 10_000 * U)
    d.open(M, 2, 1, usdt("50000"), 20, 5_000 * U, 500 * U)  # 1 is short: BP 75,000
    d.mark(M, usdt("50000"))
    [settled] = of_type(d.mark(M, usdt("80000")), LiquidationSettled)
    assert (settled.account, settled.fund_delta) == (1, -100 * U)
    assert d.pos(M, BACKSTOP_ACCOUNT).size == -20
    d.check()


def test_takeover_surplus_clawback_capped() -> None:
    # DOMAIN.md §3 "Fund delta with a fee cap", end to end: 0.1 BTC long with bankruptcy
    # price 51,000 taken over at 56,100 (MMR 10 %): surplus 510, fund +28.05 at a 0.5 % cap,
    # the trader gets 481.95 back.
    # 9x: the initial margin must exceed the 10 % MMR.
    spec = btc_usdt_spec(tiers=TierTable([(0, 9, 100_000)]), liquidation_fee_cap_ppm=5_000)
    d = Desk(spec)
    d.open(M, 1, 2, usdt("60000"), 100, 900 * U, 5_000 * U)
    d.mark(M, usdt("60000"))
    assert d.markets[M].view(1).bankruptcy_price == usdt("51000")
    [settled] = of_type(d.mark(M, usdt("56100")), LiquidationSettled)
    assert (settled.fund_delta, settled.returned_to_trader) == (28_050_000, 481_950_000)
    assert d.wallet("USDT", 1) == 481_950_000
    assert ledger_kinds(d)[0] == (FundKind.LIQUIDATION_FEE, 28_050_000)
    d.check()


def test_takeover_inverse_clawback_is_the_surplus_at_the_mark() -> None:
    d = Desk(btc_usd_spec())
    # Long 1,000 x 100 USD @ 50,000 (2 BTC) with 0.1 BTC margin; short well funded.
    d.open("BTC-USD", 1, 2, 500_000, 1_000, BTC // 10, BTC)
    d.mark("BTC-USD", 500_000)
    v = d.markets["BTC-USD"].view(1)
    # Shown on the tick as they would execute: the liquidation price is the highest
    # tick at or below the exact threshold 478,571 (the first mark that liquidates),
    # the bankruptcy price 476,190.47... rounded up to the tick, against the trader.
    assert (v.liquidation_price, v.bankruptcy_price) == (478_570, 476_195)
    trigger = v.liquidation_price
    # The backstop's side of the trade is rounded in its favour: the trader's
    # surplus is one quantum below close_result's (1,044,153).
    pos = d.pos("BTC-USD", 1)
    _, surplus = takeover_result(d.markets["BTC-USD"].spec, pos, pos.size, trigger)
    assert surplus == 1_044_152
    assert of_type(d.mark("BTC-USD", 478_575), LiquidationSettled) == []  # one tick above
    [settled] = of_type(d.mark("BTC-USD", trigger), LiquidationSettled)
    assert (settled.fund_delta, settled.returned_to_trader) == (surplus, 0)
    assert d.fund("BTC") == surplus - 313_245  # minus the backstop's initial margin
    d.check()


# --- when the fund refuses: ADL --------------------------------------------------


def test_fund_at_zero_sends_shortfall_to_adl() -> None:
    d = Desk(btc_usdt_spec())
    d.margin(1, M, 500 * U)  # the long to be liquidated: 0.02 @ 50,000
    d.margin(4, M, 1_000 * U)  # a healthy long 0.01
    d.margin(2, M, 100 * U)  # short 0.01, highest leverage: ranked first
    d.margin(3, M, 200 * U)  # short 0.01, ranked second
    d.margin(5, M, 5_000 * U)  # short 0.01, low leverage: ranked last, untouched
    d.fill(M, 1, 2, usdt("50000"), 10)
    d.fill(M, 1, 3, usdt("50000"), 10)
    d.fill(M, 4, 5, usdt("50000"), 10)
    d.mark(M, usdt("50000"))
    assert d.fund("USDT") == 0

    out = d.mark(M, usdt("20000"))  # R = 500 - 600 = -100 > fund 0
    notices = of_type(out, AdlNotice)
    assert [(n.account, n.side, n.quantity, n.price, n.realised) for n in notices] == [
        (2, -1, 10, usdt("25000"), 250 * U),
        (3, -1, 10, usdt("25000"), 250 * U),
    ]
    [event] = of_type(out, AdlEvent)
    assert (event.quantity, event.price, event.counterparties) == (20, usdt("25000"), 2)
    assert (event.deficit, event.haircut, event.overshoot) == (100 * U, 100 * U, 0)
    assert event.closed_notional == 500 * U
    [settled] = of_type(out, LiquidationSettled)
    assert (settled.account, settled.adl_quantity, settled.fund_delta) == (1, 20, 0)
    # Sizes net to zero: 4 long 0.01 against 5 short 0.01; 2 and 3 were closed and swept.
    sizes = {a: p.size for a, p in d.markets[M].positions.items()}
    assert sizes == {4: 10, 5: -10}
    assert (d.wallet("USDT", 2), d.wallet("USDT", 3)) == (350 * U, 450 * U)
    assert d.fund("USDT") == 0 and d.funds["USDT"].ledger == []
    d.check()


@pytest.mark.parametrize(("cap", "adl"), [(50 * U, True), (100 * U, False)])
def test_market_loss_cap(cap: int, adl: bool) -> None:
    # Two markets share the USDT fund; only BTC-USDT is capped.  Shortfall 100 in each.
    # Beyond the cap the fund pays the cap (not nothing, as it once did) and ADL the
    # rest: with 50 paid in, the long's bankruptcy price is 50,000 - 550/0.02 = 22,500.
    d = Desk(btc_usdt_spec(fund_loss_cap=cap), btc_usdt_spec("ETH-USDT"))
    d.inject("USDT", 10_000 * U)
    long_vs_short(d, M)
    long_vs_short(d, "ETH-USDT")
    btc = d.mark(M, usdt("20000"))
    eth = d.mark("ETH-USDT", usdt("20000"))
    [settled] = [s for s in of_type(btc, LiquidationSettled) if s.account == 1]
    assert settled.adl_quantity == (20 if adl else 0)
    if adl:
        [event] = of_type(btc, AdlEvent)
        assert event.liquidation_id == settled.liquidation_id
        assert (event.reason, event.price, event.deficit) == (
            AdlReason.MARKET_CAP,
            usdt("22500"),
            100 * U,
        )
        assert (event.fund_paid, event.haircut, event.overshoot) == (50 * U, 50 * U, 0)
        assert settled.fund_delta == -50 * U
    else:
        # Paid, but the cap is used up: the backstop gets no margin and, bankrupt at
        # the mark, is deleveraged at once (no further loss: price == mark).
        assert [e.amount for e in d.funds["USDT"].ledger if e.market == M] == [-100 * U]
        assert [(e.price, e.deficit) for e in of_type(btc, AdlEvent)] == [(usdt("20000"), 0)]
    assert [s.fund_delta for s in of_type(eth, LiquidationSettled)] == [-100 * U]
    shortfalls = [
        (e.market, e.amount) for e in d.funds["USDT"].ledger if e.kind is FundKind.SHORTFALL
    ]
    assert shortfalls == [(M, -cap), ("ETH-USDT", -100 * U)]
    d.check()


@pytest.mark.parametrize(("crash", "covered"), [("10050", True), ("9950", False)])
def test_drawdown_limit_refuses_beyond_30_percent(crash: str, covered: bool) -> None:
    # Fund 1,000 with a 30 % drawdown limit may lose 300: a 299 shortfall is paid,
    # of a 301 one it pays 300 and ADL takes 1 (at 50,000 - 800/0.02 = 10,000).
    d = Desk(btc_usdt_spec())
    d.inject("USDT", 1_000 * U)
    long_vs_short(d)
    out = d.mark(M, usdt(crash))
    [settled] = of_type(out, LiquidationSettled)
    if covered:
        assert (settled.fund_delta, settled.adl_quantity) == (-299 * U, 0)
        # What is left of the 300 room goes to the backstop: min(IM 1.608, 1).
        assert ledger_kinds(d)[1:] == [
            (FundKind.SHORTFALL, -299 * U),
            (FundKind.BACKSTOP_MARGIN, -U),
        ]
        assert d.fund("USDT") == 700 * U
    else:
        assert (settled.fund_delta, settled.adl_quantity) == (-300 * U, 20)
        [event] = of_type(out, AdlEvent)
        assert (event.reason, event.price) == (AdlReason.DRAWDOWN_LIMIT, usdt("10000"))
        assert (event.deficit, event.fund_paid, event.haircut) == (301 * U, 300 * U, U)
        assert d.fund("USDT") == 700 * U
    d.check()


def test_whole_open_interest_in_one_tick() -> None:
    # dYdX 2025-10-10: every long crossed by one 50 % tick; the fund (1,000, so 300 of
    # drawdown room) covers what it can, the rest is deleveraged.  Every balance stays >= 0.
    d = Desk(btc_usdt_spec())
    d.inject("USDT", 1_000 * U)
    margins = [100, 200, 300, 400, 450, 480]  # shortfalls at 25,000: 400 ... 20
    longs = [10 + i for i in range(len(margins))]
    for a, m in zip(longs, margins, strict=True):
        d.margin(a, M, m * U)
    d.margin(1, M, 2_000 * U)
    d.margin(2, M, 3_000 * U)
    d.margin(3, M, 50 * U)
    for i, a in enumerate(longs):
        d.fill(M, a, (1, 2, 3)[i // 2], usdt("50000"), 20)
    d.mark(M, usdt("50000"))

    out = d.mark(M, usdt("25000"))
    settled = of_type(out, LiquidationSettled)
    assert sorted(s.account for s in settled if s.account != BACKSTOP_ACCOUNT) == longs
    assert all(d.pos(M, a) is None for a in longs)
    # The fund paid exactly its drawdown room once, then refused: ADL took the rest.
    shortfalls = [e.amount for e in d.funds["USDT"].ledger if e.kind is FundKind.SHORTFALL]
    assert shortfalls == [-300 * U]
    assert d.fund("USDT") == 700 * U
    adl_qty = sum(e.quantity for e in of_type(out, AdlEvent))
    assert adl_qty >= 5 * 20
    assert all(e.overshoot >= 0 for e in of_type(out, AdlEvent))
    assert violations(d.engine) == []
    assert all(b >= 0 for b in d.engine.wallets["USDT"].balances.values())
    longs_left = sum(p.size for p in d.markets[M].positions.values() if p.size > 0)
    shorts_left = -sum(p.size for p in d.markets[M].positions.values() if p.size < 0)
    assert longs_left == shorts_left == 0


def test_backstop_later_bankrupt_is_deleveraged() -> None:
    d = Desk(btc_usdt_spec())
    d.inject("USDT", 10_000 * U)
    long_vs_short(d)
    d.mark(M, usdt("24000"))  # the backstop now holds 0.02 @ 24,000 with 3.84 margin
    assert d.markets[M].view(BACKSTOP_ACCOUNT).bankruptcy_price == usdt("23808")
    assert of_type(d.mark(M, usdt("23810")), LiquidationSettled) == []
    out = d.mark(M, usdt("23800"))
    [settled] = of_type(out, LiquidationSettled)
    assert (settled.account, settled.adl_quantity, settled.price) == (
        BACKSTOP_ACCOUNT,
        20,
        usdt("23808"),
    )
    [notice] = of_type(out, AdlNotice)
    assert (notice.account, notice.quantity, notice.price) == (2, 20, usdt("23808"))
    assert notice.realised == 20 * (50_000 - 23_808) * 10**3  # 0.02 x 26,192
    assert d.fund("USDT") == 9_976_160_000  # nothing more from the fund
    bs = d.pos(M, BACKSTOP_ACCOUNT)
    assert bs is None or (bs.size, bs.margin) == (0, 0)
    d.check()


# --- book mode ---------------------------------------------------------------------


@pytest.fixture
def book() -> Desk:
    """Book mode; fund 10,000; long 1 (0.02 @ 50,000, margin 500) liquidated at 25,100."""
    d = Desk(btc_usdt_spec(liquidation_mode=LiquidationMode.BOOK))
    d.inject("USDT", 10_000 * U)
    long_vs_short(d)
    d.margin(3, M, 1_000 * U)
    out = d.mark(M, usdt("25100"))
    # The fund earmarks MM (0.4 % of 502) = 2.008 for slippage: the worst price is where
    # margin + 2.008 is used up, 25,000 - 100.40 = 24,899.60.
    assert of_type(out, LiquidationOrder) == [
        LiquidationOrder(
            market=M,
            liquidation_id=1,
            account=1,
            side=-1,
            quantity=20,
            worst_price=usdt("24899.60"),
            ts=0,
        )
    ]
    assert d.funds["USDT"].reserved_total == 2_008_000
    assert d.pos(M, 1).liquidation == 1
    return d


def test_book_fills_within_worst_price_settle(book: Desk) -> None:
    d = book
    assert of_type(d.apply(LiquidationFill(M, 1, 3, usdt("25000"), 10)), LiquidationSettled) == []
    assert (d.pos(M, 1).size, d.pos(M, 1).margin) == (10, 250 * U)
    out = d.apply(LiquidationFill(M, 1, 3, usdt("24950"), 10))
    # R = 500 - 250 - 250.50 = -0.50: paid from the reservation, the rest released.
    [settled] = of_type(out, LiquidationSettled)
    assert (settled.quantity, settled.fund_delta, settled.adl_quantity) == (20, -500_000, 0)
    assert d.funds["USDT"].reserved_total == 0
    assert d.fund("USDT") == 10_000 * U - 500_000
    assert d.pos(M, 1) is None
    assert (d.pos(M, 3).size, d.pos(M, 3).basis) == (20, 499_500_000)
    d.check()


def test_book_surplus_fee_on_fills(book: Desk) -> None:
    # Filled at the mark: R = 500 - 497.99... -> the fund claws back all of the surplus.
    out = book.apply(LiquidationFill(M, 1, 3, usdt("25100"), 20))
    [settled] = of_type(out, LiquidationSettled)
    assert (settled.fund_delta, settled.returned_to_trader) == (2 * U, 0)
    assert book.fund("USDT") == 10_002 * U
    book.check()


def test_book_rejections_leave_state_unchanged(book: Desk) -> None:
    e = book.engine
    assert_rejected(
        e, LiquidationFill(M, 1, 3, usdt("24899.50"), 10), Code.INVALID_ARGUMENT, "price"
    )
    assert_rejected(
        e, LiquidationFill(M, 1, 3, usdt("25000"), 21), Code.INVALID_ARGUMENT, "quantity"
    )
    assert_rejected(
        e,
        LiquidationFill(M, 1, 1, usdt("25000"), 10),
        Code.INVALID_ARGUMENT,
        "counterparty_account",
    )
    assert_rejected(
        e, LiquidationFill(M, 7, 3, usdt("25000"), 10), Code.NOT_FOUND, "liquidation_id"
    )
    assert_rejected(
        e,
        LiquidationFill(M, 1, 0, usdt("25000"), 10),
        Code.INVALID_ARGUMENT,
        "counterparty_account",
    )
    assert_rejected(
        e, LiquidationFill(M, 1, 3, usdt("25000.05"), 10), Code.INVALID_ARGUMENT, "price"
    )
    assert_rejected(e, LiquidationDone(M, 2), Code.NOT_FOUND, "liquidation_id")
    # The frozen account can neither trade nor take margin out.
    assert_rejected(
        e, Fill(M, 99, 3, 1, usdt("25100"), 1), Code.FAILED_PRECONDITION, "seller_account"
    )
    assert_rejected(e, MarginTransfer(1, M, -U), Code.FAILED_PRECONDITION, "account")
    # A counterparty whose margin cannot pay for the fill is refused too.
    book.margin(9, M, 0)
    assert_rejected(
        e,
        LiquidationFill(M, 1, 9, usdt("25000"), 10, counterparty_fee=1),
        Code.FAILED_PRECONDITION,
        "counterparty_account",
    )
    # The order still works afterwards.
    assert of_type(book.apply(LiquidationFill(M, 1, 3, usdt("24899.60"), 20)), LiquidationSettled)
    book.check()


def test_book_done_sends_the_rest_to_adl(book: Desk) -> None:
    d = book
    d.apply(LiquidationFill(M, 1, 3, usdt("25000"), 10))
    out = d.apply(LiquidationDone(M, 1))
    [notice] = of_type(out, AdlNotice)
    assert (notice.account, notice.quantity, notice.side) == (2, 10, -1)
    [settled] = of_type(out, LiquidationSettled)
    assert (settled.account, settled.quantity, settled.adl_quantity) == (1, 20, 10)
    assert d.pos(M, 1) is None and d.markets[M].liquidations == {}
    assert d.funds["USDT"].reserved_total == 0
    assert d.pos(M, 2).size == -10  # partially deleveraged: see test_adl re-indexing
    assert_rejected(d.engine, LiquidationDone(M, 1), Code.NOT_FOUND, "liquidation_id")


def test_book_done_without_any_fill(book: Desk) -> None:
    out = book.apply(LiquidationDone(M, 1))
    assert [n.quantity for n in of_type(out, AdlNotice)] == [20]
    assert book.pos(M, 1) is None
    assert book.pos(M, 2) is None  # closed entirely and swept
    book.check()


def test_book_fund_grants_nothing_when_empty() -> None:
    d = Desk(btc_usdt_spec(liquidation_mode=LiquidationMode.BOOK))
    long_vs_short(d)
    [order] = of_type(d.mark(M, usdt("25100")), LiquidationOrder)
    assert order.worst_price == usdt("25000")  # the bankruptcy price itself
    assert d.markets[M].liquidations[1].reserved == 0
    d.check()


# --- liquidation index ------------------------------------------------------------


def test_index_crossed_order_and_bounds() -> None:
    def at(threshold: int, account: int) -> Position:
        pos = Position(account)
        pos.threshold = threshold
        return pos

    idx = LiquidationIndex()
    longs = {a: at(t, a) for t, a in [(100, 1), (300, 2), (200, 3)]}
    for pos in longs.values():
        idx.add(True, pos)
    for t, a in [(500, 4), (400, 5), (600, 6)]:
        idx.add(False, at(t, a))
    assert len(idx) == 6
    assert idx.crossed(350) == []
    assert idx.crossed(300) == [2]  # long crossed at equality
    assert idx.crossed(150) == [2, 3]  # highest threshold first
    assert idx.crossed(400) == [5]  # short crossed at equality
    assert idx.crossed(10**6) == [5, 4, 6]  # lowest threshold first
    assert idx.nearest() == (300, 400)
    idx.remove(True, longs[2])
    assert idx.crossed(250) == []
    idx.add(False, at(1, BACKSTOP_ACCOUNT))
    assert idx.crossed(1) == [3, 1, BACKSTOP_ACCOUNT]
    assert LiquidationIndex().nearest() == (None, None)


# --- simultaneous liquidations of both sides (regressions) ---------------------------


def test_both_sides_liquidated_in_one_step_at_the_mark() -> None:
    # Regression: with an empty fund, two zero-margin accounts trading at the mark are
    # both crossed; the backstop took the long (no margin), was bankrupt at once and
    # waited for ADL, then took the short too, went flat and was swept while its
    # liquidation was still pending -> KeyError in _retry_adl, state half applied.
    d = Desk(btc_usdt_spec())
    d.mark(M, usdt("50000"))
    out = d.fill(M, 1, 2, usdt("50000"), 20)
    # The backstop took 1 and then netted out against 2 (both waiting for ADL).
    settled = sorted(s.account for s in of_type(out, LiquidationSettled))
    assert settled == [1, 2, BACKSTOP_ACCOUNT]
    assert d.markets[M].positions == {} and d.markets[M].liquidations == {}
    d.check()


def test_backstop_is_never_deleveraged_into_negative_margin() -> None:
    # Regression: 1 buys 0.001 from 2 at 50,005 with the mark at 50,000, neither with
    # margin.  1 is bankrupt (fund empty: ADL), 2 is taken over by the backstop with
    # 0.0015 USDT of margin; ADL of 1 against the backstop at 50,005 used to cost it 0.005,
    # leaving -0.0035 that the sweep dropped: 3,500 quantums created from nothing.
    d = Desk(btc_usdt_spec())
    for a in (1, 2):
        d.apply(Deposit(a, "USDT", 3_000 * U))
    d.mark(M, usdt("50000"))
    d.fill(M, 1, 2, usdt("50005"), 1)
    d.check()
    bs = d.pos(M, BACKSTOP_ACCOUNT)
    assert bs is None or bs.margin >= 0


def test_inverse_backstop_rounding_never_goes_negative() -> None:
    # Found by the state machine (shrunk).  BTC-USD as in test_invariants_stateful: fund
    # loss cap 0.05 BTC, fund seeded; accounts 1/2 trade at ~147x, three crashes, then a
    # fill just above the mark.
    from riskd.core.events import FundInjection

    d = Desk(btc_usd_spec(fund_loss_cap=BTC // 20))
    for a in (1, 2, 7):
        d.apply(Deposit(a, "BTC", BTC // 10))
    d.mark("BTC-USD", 500_000)
    d.apply(FundInjection("BTC", 3_162_000))
    d.mark("BTC-USD", 250_000)
    d.mark("BTC-USD", 125_000)
    d.apply(MarginTransfer(1, "BTC-USD", 158_000))
    d.apply(MarginTransfer(2, "BTC-USD", 158_000))
    d.fill("BTC-USD", 1, 2, 125_000, 291)
    d.apply(FundInjection("BTC", 718_000))
    d.fill("BTC-USD", 1, 2, 125_300, 264)
    d.apply(FundInjection("BTC", 2_780_000))
    d.apply(MarginTransfer(7, "BTC-USD", 1_092_000))
    d.fill("BTC-USD", 1, 2, 125_000, 204)
    d.mark("BTC-USD", 62_500)
    d.mark("BTC-USD", 59_375)
    d.check()
    d.fill("BTC-USD", 7, 2, 59_585, 78)  # actual: AssertionError from MarketEngine._sweep
    d.check()


# --- partial liquidation (step down one tier) ------------------------------------------


def test_partial_liquidation_steps_down_one_tier() -> None:
    # Long 1.2 BTC @ 50,000 (60,000 notional: bracket 2, MMR 0.5 %, cum 50) with 600 margin:
    # LP 49,706.86.  At 49,700 it is solvent (B 240), so only enough to leave the bracket is
    # taken over: keep floor((50,000 - 1 quantum) / 49.70) = 1.006 BTC, take 0.194.
    spec = btc_usdt_spec(partial_liquidation=True, liquidation_fee_cap_ppm=1_000)
    d = Desk(spec)
    d.inject("USDT", 10_000 * U)
    d.open(M, 1, 2, usdt("50000"), 1_200, 600 * U, 50_000 * U)
    d.mark(M, usdt("50000"))
    # The exact threshold is 49,706.86; the first mark tick that liquidates is 49,706.80.
    assert d.markets[M].view(1).liquidation_price == usdt("49706.80")
    out = d.mark(M, usdt("49700"))
    [settled] = of_type(out, LiquidationSettled)
    # Fee: 0.1 % of the 9,641.80 taken over; the realised -58.20 stays with the position.
    assert (settled.quantity, settled.fund_delta, settled.returned_to_trader) == (194, 9_641_800, 0)
    p1 = d.pos(M, 1)
    assert (p1.size, p1.basis, p1.margin, p1.liquidation) == (1_006, 50_300 * U, 532_158_200, 0)
    v = d.markets[M].view(1)
    assert v.maintenance_margin == 199_992_800  # 49,998.20 x 0.4 %: bracket 1 now
    assert v.margin_balance == 230_358_200 > v.maintenance_margin
    assert d.pos(M, BACKSTOP_ACCOUNT).size == 194
    d.check()


def test_bankrupt_position_is_not_partially_liquidated() -> None:
    spec = btc_usdt_spec(partial_liquidation=True, liquidation_fee_cap_ppm=1_000)
    d = Desk(spec)
    d.inject("USDT", 10_000 * U)
    d.open(M, 1, 2, usdt("50000"), 1_200, 600 * U, 50_000 * U)
    d.mark(M, usdt("50000"))
    [settled] = of_type(d.mark(M, usdt("49000")), LiquidationSettled)  # R = 600 - 1,200 < 0
    assert (settled.quantity, settled.fund_delta) == (1_200, -600 * U)
    assert d.pos(M, 1) is None
    d.check()


def test_partial_liquidation_needs_a_fee_cap() -> None:
    with pytest.raises(ValueError, match="fee cap"):
        btc_usdt_spec(partial_liquidation=True)


# --- partial liquidation policy: fraction with a cool-down; takeover price ---------------


def _fraction_desk(mode: LiquidationMode = LiquidationMode.TAKEOVER) -> Desk:
    """Long 0.5 BTC @ 50,000 with 500 margin (LP 49,196.78), crossed and solvent at 49,100.

    Policy ``fraction`` (20 %, 30 s cool-down), fee cap 0.1 %.
    """
    spec = btc_usdt_spec(
        partial_liquidation_policy=PartialLiquidation.FRACTION,
        liquidation_fee_cap_ppm=1_000,
        liquidation_mode=mode,
    )
    d = Desk(spec)
    d.inject("USDT", 10_000 * U)
    d.open(M, 1, 2, usdt("50000"), 500, 500 * U, 50_000 * U)
    d.margin(3, M, 50_000 * U)
    d.mark(M, usdt("50000"))
    assert d.markets[M].view(1).liquidation_price == usdt("49196.70")
    return d


def test_fraction_steps_20_percent_then_the_rest_after_the_cool_down() -> None:
    d = _fraction_desk()
    out = d.mark(M, usdt("49100"), ts=1_000)
    # 0.1 BTC passes to the backstop at 49,100: realised -90, fee 0.1 % of 4,910.
    [step] = of_type(out, LiquidationSettled)
    assert (step.quantity, step.fund_delta, step.returned_to_trader) == (100, 4_910_000, 0)
    p1 = d.pos(M, 1)
    assert (p1.size, p1.margin) == (400, 405_090_000)
    # Still crossed (B 45.09 <= MM 78.56): frozen for 30 s, not closed whole at once.
    liq = d.markets[M].liquidations[p1.liquidation]
    assert (liq.stage, liq.until) == (Stage.COOLING, 31_000)
    assert d.markets[M].view(1).in_liquidation
    assert_rejected(
        d.engine,
        Fill(M, 9, 3, 1, usdt("49100"), 1, ts=2_000),
        Code.FAILED_PRECONDITION,
        "seller_account",
    )
    assert of_type(d.mark(M, usdt("49100"), ts=30_999), LiquidationSettled) == []
    d.check()
    [rest] = of_type(d.mark(M, usdt("49100"), ts=31_000), LiquidationSettled)
    # The rest, whole: R = 45.09, fee 0.1 % of 19,640 = 19.64, 25.45 back to the trader.
    assert (rest.quantity, rest.fund_delta, rest.returned_to_trader) == (
        400,
        19_640_000,
        25_450_000,
    )
    assert d.pos(M, 1) is None and d.pos(M, BACKSTOP_ACCOUNT).size == 500
    d.check()


def test_fraction_cooling_position_released_when_the_mark_recovers() -> None:
    d = _fraction_desk()
    d.mark(M, usdt("49100"), ts=1_000)
    assert d.markets[M].view(1).in_liquidation
    assert of_type(d.mark(M, usdt("49500"), ts=2_000), LiquidationSettled) == []
    p1 = d.pos(M, 1)
    assert (p1.size, p1.liquidation) == (400, 0) and not d.markets[M].liquidations
    # Crossed again later (after the cool-down): another 20 % step, not the whole.
    [step] = of_type(d.mark(M, usdt("49000"), ts=60_000), LiquidationSettled)
    assert step.quantity == 80
    d.check()


def test_fraction_cooling_position_closed_at_once_when_bankrupt() -> None:
    d = _fraction_desk()
    d.mark(M, usdt("49100"), ts=1_000)
    # 48,000 inside the cool-down: R = 405.09 - 800 < 0, the rest goes whole now.
    out = d.mark(M, usdt("48000"), ts=2_000)
    [rest] = [s for s in of_type(out, LiquidationSettled) if s.account == 1]
    assert (rest.quantity, rest.fund_delta) == (400, -394_910_000)
    assert d.pos(M, 1) is None
    d.check()


def test_fraction_in_book_mode() -> None:
    d = _fraction_desk(LiquidationMode.BOOK)
    [order] = of_type(d.mark(M, usdt("49100"), ts=1_000), LiquidationOrder)
    assert order.quantity == 100  # 20 % of 0.5 BTC
    assert_rejected(
        d.engine,
        LiquidationFill(M, order.liquidation_id, 3, usdt("49100"), 101, ts=1_500),
        Code.INVALID_ARGUMENT,
        "quantity",
    )
    out = d.apply(LiquidationFill(M, order.liquidation_id, 3, usdt("49100"), 100, ts=1_500))
    [step] = of_type(out, LiquidationSettled)
    assert (step.quantity, step.fund_delta, step.adl_quantity) == (100, 4_910_000, 0)
    assert d.funds["USDT"].reserved_total == 0
    assert d.pos(M, 1).size == 400 and d.markets[M].view(1).in_liquidation  # cooling
    d.check()
    [rest] = of_type(d.mark(M, usdt("49100"), ts=31_000), LiquidationOrder)
    assert rest.quantity == 400
    d.check()


def test_fraction_book_order_given_up_goes_whole() -> None:
    d = _fraction_desk(LiquidationMode.BOOK)
    [order] = of_type(d.mark(M, usdt("49100"), ts=1_000), LiquidationOrder)
    out = d.apply(LiquidationDone(M, order.liquidation_id, ts=1_500))
    [step] = of_type(out, LiquidationSettled)
    assert (step.quantity, step.fund_delta) == (0, 0)
    [whole] = of_type(out, LiquidationOrder)
    assert whole.quantity == 500 and of_type(out, AdlNotice) == []
    d.check()


def test_fraction_needs_a_fee_cap_and_a_positive_fraction() -> None:
    with pytest.raises(SpecError, match="fee cap"):
        btc_usdt_spec(partial_liquidation_policy=PartialLiquidation.FRACTION)
    with pytest.raises(SpecError) as info:
        btc_usdt_spec(partial_fraction_ppm=0)
    assert info.value.field == "partial_fraction_ppm"


@pytest.mark.parametrize(
    ("price", "at", "fee", "backstop_basis"),
    [
        (TakeoverPrice.MARK, "25100", 2 * U, 502 * U),
        (TakeoverPrice.BANKRUPTCY, "25000", 0, 500 * U),
    ],
)
def test_takeover_price(price: TakeoverPrice, at: str, fee: int, backstop_basis: int) -> None:
    # Long 0.02 @ 50,000, margin 500 (BP 25,000), crossed at 25,100 with 2 left.  At the
    # mark the fund claws the 2 back as a fee; at the bankruptcy price (BitMEX) the
    # backstop takes the position at 25,000 and holds the 2 as unrealised profit.
    d = Desk(btc_usdt_spec(takeover_price=price))
    d.inject("USDT", 10_000 * U)
    long_vs_short(d)
    [settled] = of_type(d.mark(M, usdt("25100")), LiquidationSettled)
    assert (settled.price, settled.fund_delta, settled.returned_to_trader) == (usdt(at), fee, 0)
    bs = d.pos(M, BACKSTOP_ACCOUNT)
    assert (bs.size, bs.basis) == (20, backstop_basis)
    d.check()
    # A bankrupt position passes at the mark either way (the fund pays the shortfall).
    d2 = Desk(btc_usdt_spec(takeover_price=price))
    d2.inject("USDT", 10_000 * U)
    long_vs_short(d2)
    [s2] = of_type(d2.mark(M, usdt("24000")), LiquidationSettled)
    assert (s2.price, s2.fund_delta) == (usdt("24000"), -20 * U)
    d2.check()


def test_partial_policy_keys_are_read_from_toml() -> None:
    from riskd.config import default_toml, parse

    text = default_toml()  # BTC-USDT, the first market, spells out every policy key
    for old, new in [
        ('partial_liquidation_policy = "full"', 'partial_liquidation_policy = "fraction"'),
        ("partial_fraction_ppm = 200000", "partial_fraction_ppm = 250000"),
        ("partial_cooldown_ms = 30000", "partial_cooldown_ms = 10000"),
        ('takeover_price = "mark"', 'takeover_price = "bankruptcy"'),
        ("liquidation_fee_cap_ppm = 1000000", "liquidation_fee_cap_ppm = 10000"),
    ]:
        assert old in text, old
        text = text.replace(old, new, 1)
    spec = next(s for s in parse(text).markets if s.symbol == M)
    assert spec.partial_policy is PartialLiquidation.FRACTION
    assert (spec.partial_fraction_ppm, spec.partial_cooldown_ms) == (250_000, 10_000)
    assert spec.takeover_price is TakeoverPrice.BANKRUPTCY
