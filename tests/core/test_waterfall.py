"""The loss waterfall, one rule in both modes, and the ADL price guarantee.

Rule (docs/engine.md "Who pays for a loss"): a surplus pays the capped
liquidation fee; a shortfall is paid by the fund up to its budget (free balance,
the market's remaining loss cap, the drawdown guard; book mode: its slippage
reservation) and only the uncovered rest goes to ADL, at the bankruptcy price
with the fund's payment counted as margin, on the tick against the trader and
never past the mark.  No ADL counterparty ever gets a price worse for it than the
bankrupt position's own bankruptcy price.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
from _kit import BTC, Desk, U, btc_usd_spec, btc_usdt_spec, of_type, usdt
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from riskd.core import (
    AdlEvent,
    AdlNotice,
    AdlReason,
    FundKind,
    FundPolicy,
    LiquidationDone,
    LiquidationFill,
    LiquidationMode,
    LiquidationOrder,
    LiquidationSettled,
    MarketSpec,
    Position,
    Rejected,
    TierTable,
)
from riskd.core.liquidation import (
    Stage,
    Waterfall,
    adl_price,
    close_result,
    execution_price,
    takeover_result,
    waterfall,
)
from riskd.core.market import PartialLiquidation, TakeoverPrice

M = "BTC-USDT"
INV = "BTC-USD"


def _copy(p: Position) -> Position:
    c = Position(p.account)
    c.size, c.basis, c.margin = p.size, p.basis, p.margin
    return c


def _paid(d: Desk, asset: str, market: str, lid: int) -> tuple[int, int]:
    """(shortfall paid, fee taken) by the fund for one liquidation."""
    cause = f"liq:{market}:{lid}"
    entries = [e for e in d.funds[asset].ledger if e.cause == cause]
    paid = -sum(e.amount for e in entries if e.kind is FundKind.SHORTFALL)
    fee = sum(e.amount for e in entries if e.kind is FundKind.LIQUIDATION_FEE)
    return paid, fee


# --- the split itself --------------------------------------------------------------


def test_waterfall_split() -> None:
    assert waterfall(0, 1_000, 5_000, 10) == Waterfall(0, 0, 0)
    assert waterfall(100, 1_000, 5_000, 10).fee == 5  # capped at 0.5 % of 1,000
    assert waterfall(3, 1_000, 5_000, 10).fee == 3  # never more than the surplus
    assert waterfall(-30, 1_000, 5_000, 10) == Waterfall(0, 10, 20)  # the fund's 10 only
    assert waterfall(-30, 1_000, 5_000, 50) == Waterfall(0, 30, 0)
    assert waterfall(-30, 1_000, 5_000, 0) == Waterfall(0, 0, 30)


# --- DOMAIN.md §3 worked examples ----------------------------------------------------


def test_domain_fee_cap_examples() -> None:
    # "Fund delta with a fee cap": 0.1 BTC long, bankruptcy quote 5,100 (BP 51,000), sold
    # at 56,100: the surplus is 510; the fund takes 28.05 at a 0.5 % cap (of the 5,610 fill
    # notional), 140.25 at 2.5 %, and all 510 at 100 % (full clawback).
    for cap_ppm, fund in [(5_000, 28_050_000), (25_000, 140_250_000), (1_000_000, 510 * U)]:
        spec = btc_usdt_spec(tiers=TierTable([(0, 9, 100_000)]), liquidation_fee_cap_ppm=cap_ppm)
        d = Desk(spec)
        d.open(M, 1, 2, usdt("60000"), 100, 900 * U, 5_000 * U)
        d.mark(M, usdt("60000"))
        assert d.markets[M].view(1).bankruptcy_price == usdt("51000")
        [settled] = of_type(d.mark(M, usdt("56100")), LiquidationSettled)
        assert (settled.fund_delta, settled.returned_to_trader) == (fund, 510 * U - fund)
        d.check()


def test_domain_inverse_bankruptcy_price_on_the_tick() -> None:
    # "Bybit inverse bankruptcy": long 5,000 BTCUSD contracts @ 7,890.08 at 50x: BP =
    # E·L/(L+1) = 7,735.3725..., shown (and executed) at 7,735.50, the 0.5 tick above:
    # rounded against the trader.
    spec = btc_usd_spec(price_decimals=2, tick_size=50, tiers=TierTable([(0, 50, 5_000)]))
    d = Desk(spec)
    entry = 789_008
    # IM at 50x: 5,000 x 100 / 7,890.08 / 50 BTC, rounded up to the satoshi.
    im = -(-5_000 * 100 * BTC * 100 // (entry * 50))
    d.margin(1, INV, im)
    d.margin(2, INV, 10 * BTC)
    # 7,890.08 is not on the 0.5 tick: the position is opened in two fills whose value
    # adds up to exactly the one at 7,890.08 is impossible, so open at the tick below
    # and check the formula on the position as it is.
    d.fill(INV, 1, 2, 789_000, 5_000)
    d.mark(INV, 789_000)
    v = d.markets[INV].view(1)
    pos = d.pos(INV, 1)
    exact = 789_000 * 50 / 51  # E·L/(L+1) on the price actually traded
    assert v.bankruptcy_price % 50 == 0
    assert v.bankruptcy_price - 50 < exact * (1 + 1e-6)
    assert close_result(spec, pos, v.bankruptcy_price)[1] >= 0  # solvent where it executes
    assert close_result(spec, pos, v.bankruptcy_price - 50)[1] < 0  # not a tick lower
    assert v.bankruptcy_price == execution_price(spec, pos)


def test_domain_bybit_inverse_example_exactly() -> None:
    # The example's own numbers: E = 7,890.08 (price decimals 2, tick 0.01 to open),
    # 50x.  BP 7,735.3725... rounded against the trader to the 0.5 tick is 7,735.50.
    spec = btc_usd_spec(price_decimals=2, tick_size=1, tiers=TierTable([(0, 50, 5_000)]))
    pos = Position(1)
    pos.size = 5_000
    pos.basis = spec.trade_value(5_000, 789_008)
    pos.margin = -(-5_000 * 100 * BTC * 100 // (789_008 * 50))
    on_half = btc_usd_spec(price_decimals=2, tick_size=50, tiers=TierTable([(0, 50, 5_000)]))
    assert execution_price(on_half, pos) == 773_550
    assert execution_price(spec, pos) == 773_538  # 7,735.3725 to the cent, rounded up


def test_domain_adl_example_beyond_the_fund() -> None:
    # DOMAIN.md §2 "ADL" with an empty fund: 0.02 long @ 50,000, margin 500 (BP 25,000)
    # crashed to 20,000: the two ranked shorts are closed at 25,000, not the mark.
    d = Desk(btc_usdt_spec())
    d.open(M, 1, 2, usdt("50000"), 20, 500 * U, 100 * U)
    d.margin(3, M, 5_000 * U)
    d.margin(4, M, 5_000 * U)
    d.fill(M, 3, 4, usdt("50000"), 10)
    d.mark(M, usdt("50000"))
    out = d.mark(M, usdt("20000"))
    [event] = of_type(out, AdlEvent)
    assert (event.price, event.reason, event.fund_paid) == (usdt("25000"), AdlReason.FUND_EMPTY, 0)
    assert (event.deficit, event.haircut, event.overshoot) == (100 * U, 100 * U, 0)
    d.check()


def test_domain_clawback_of_a_surplus_in_book_mode() -> None:
    # "Bankruptcy quote": a 0.1 long whose close at the bankruptcy price receives exactly
    # what it owes leaves nothing; sold above it, the whole surplus is clawed back (cap 100 %).
    d = Desk(btc_usdt_spec(liquidation_mode=LiquidationMode.BOOK))
    d.inject("USDT", 1_000 * U)
    d.open(M, 1, 2, usdt("50000"), 100, 500 * U, 10_000 * U)
    d.margin(3, M, 10_000 * U)
    d.mark(M, usdt("50000"))
    [order] = of_type(d.mark(M, usdt("45100")), LiquidationOrder)
    out = d.apply(LiquidationFill(M, order.liquidation_id, 3, usdt("45100"), 100))
    [settled] = of_type(out, LiquidationSettled)
    assert (settled.fund_delta, settled.returned_to_trader) == (10 * U, 0)  # 0.1 x 100
    d.check()


# --- book mode: slippage is the fund's, the rest at a price no worse than BP ------------


def test_book_slippage_is_the_funds_and_the_rest_is_deleveraged_at_or_better_than_bp() -> None:
    # Long 0.02 @ 50,000, margin 500: BP 25,000.  The fund reserves 2.008 (MM at 25,100),
    # so the order may sell down to 24,899.60.  Half fills at 24,900 (1.00 of slippage
    # below BP), then the book gives up with the mark at 20,000.  One rule: the fund pays
    # up to its limit (here its reservation) and the rest is deleveraged at the bankruptcy
    # price computed with it: 249 margin left + 2.008 over 0.01 -> 50,000 - 25,100.80 =
    # 24,899.20, better for the short than the position's own BP of 25,000.
    d = Desk(btc_usdt_spec(liquidation_mode=LiquidationMode.BOOK))
    d.inject("USDT", 10_000 * U)
    d.open(M, 1, 2, usdt("50000"), 20, 500 * U, 5_000 * U)
    d.margin(3, M, 1_000 * U)
    d.mark(M, usdt("50000"))
    [order] = of_type(d.mark(M, usdt("25100")), LiquidationOrder)
    assert order.worst_price == usdt("24899.60")
    d.apply(LiquidationFill(M, 1, 3, usdt("24900"), 10))
    d.mark(M, usdt("20000"))
    out = d.apply(LiquidationDone(M, 1))
    [notice] = of_type(out, AdlNotice)
    assert notice.account == 2 and notice.price <= usdt("25000")
    assert notice.price == usdt("24899.20")
    [event] = of_type(out, AdlEvent)
    assert (event.reason, event.price) == (AdlReason.NO_BOOK, usdt("24899.20"))
    paid, fee = _paid(d, "USDT", M, 1)
    # 1.00 of slippage on the fill plus 1.008 to close the rest at 24,899.20.
    assert (paid, fee) == (2_008_000, 0)
    assert event.fund_paid == paid
    assert d.funds["USDT"].reserved_total == 0
    d.check()


def test_book_nothing_filled_deleverages_at_the_reservation_adjusted_price() -> None:
    d = Desk(btc_usdt_spec(liquidation_mode=LiquidationMode.BOOK))
    d.inject("USDT", 10_000 * U)
    d.open(M, 1, 2, usdt("50000"), 20, 500 * U, 5_000 * U)
    d.mark(M, usdt("50000"))
    d.mark(M, usdt("25100"))
    d.mark(M, usdt("20000"))
    out = d.apply(LiquidationDone(M, 1))
    [event] = of_type(out, AdlEvent)
    # "Computed with the reservation": margin 500 + 2.008 over 0.02 -> 24,899.60.
    assert event.price == usdt("24899.60")
    assert (event.fund_paid, event.reason) == (2_008_000, AdlReason.NO_BOOK)
    assert _paid(d, "USDT", M, 1) == (2_008_000, 0)
    d.check()


def test_takeover_partial_payment_waits_for_counterparties_with_its_reservation() -> None:
    # The fund's part is held while the position waits for ADL counterparties (all the
    # shorts are being liquidated too), and settles exactly once they appear.
    d = Desk(btc_usdt_spec(fund_loss_cap=50 * U))
    d.inject("USDT", 10_000 * U)
    d.open(M, 1, 2, usdt("50000"), 20, 500 * U, 5_000 * U)
    d.mark(M, usdt("50000"))
    d.mark(M, usdt("20000"))
    assert d.funds["USDT"].reserved_total == 0
    assert _paid(d, "USDT", M, 1) == (50 * U, 0)
    d.check()


# --- the property ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    inverse: bool
    book: bool
    long: bool
    qty: int
    leverage: int
    splits: tuple[int, ...]
    crash_ppm: int  # how far past the bankruptcy price the mark goes (ppm of it)
    fund: int  # seed, in ppm of the position's notional
    cap: int | None  # market loss cap, ppm of the notional
    drawdown_ppm: int
    fills: tuple[tuple[int, int], ...]  # book: (qty ppm of the rest, price ticks past worst)
    fee_cap_ppm: int


cases = st.builds(
    Case,
    inverse=st.booleans(),
    book=st.booleans(),
    long=st.booleans(),
    qty=st.integers(1, 400),
    leverage=st.integers(5, 100),
    splits=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
    crash_ppm=st.integers(-20_000, 300_000),
    fund=st.sampled_from([0, 1, 1_000, 5_000, 20_000, 100_000]),
    cap=st.sampled_from([None, 0, 500, 2_000, 50_000]),
    drawdown_ppm=st.sampled_from([300_000, 1_000_000]),
    fills=st.lists(st.tuples(st.integers(1, 1_000_000), st.integers(0, 40)), max_size=3).map(tuple),
    fee_cap_ppm=st.sampled_from([5_000, 1_000_000]),
)


def _spec(c: Case, notional: int) -> MarketSpec:
    mode = LiquidationMode.BOOK if c.book else LiquidationMode.TAKEOVER
    cap = None if c.cap is None else notional * c.cap // 1_000_000
    kw = {
        "liquidation_mode": mode,
        "fund_loss_cap": cap,
        "liquidation_fee_cap_ppm": c.fee_cap_ppm,
        "margin_call_ppm": 0,
    }
    return btc_usd_spec(**kw) if c.inverse else btc_usdt_spec(**kw)  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_adl_never_worse_than_bankruptcy_and_fund_pays_the_rule(c: Case) -> None:
    market = INV if c.inverse else M
    asset = "BTC" if c.inverse else "USDT"
    entry = 500_000 if c.inverse else usdt("50000")
    qty = c.qty * (5 if c.inverse else 1)
    probe = btc_usd_spec() if c.inverse else btc_usdt_spec()
    notional = abs(probe.trade_value(qty, entry))
    spec = _spec(c, notional)
    d = Desk(spec, policies={asset: FundPolicy(drawdown_limit_ppm=c.drawdown_ppm)})
    if c.fund * notional // 1_000_000:
        d.inject(asset, c.fund * notional // 1_000_000)
    bankrupt, rich = 1, 10 * notional + 10**6
    d.margin(bankrupt, market, -(-notional // c.leverage))
    # Opposite positions summing to the bankrupt quantity, funded 1x: never liquidated.
    weights = c.splits
    shares = [qty * w // sum(weights) for w in weights]
    shares[0] += qty - sum(shares)
    others = [a for a, s in zip(range(2, 2 + len(shares)), shares, strict=True) if s]
    for a, s in zip(others, [s for s in shares if s], strict=True):
        d.margin(a, market, rich)
        if c.long:
            d.fill(market, bankrupt, a, entry, s)
        else:
            d.fill(market, a, bankrupt, entry, s)
    d.margin(50, market, rich)  # the book's counterparty
    d.mark(market, entry)
    engine = d.markets[market]
    before = _copy(d.pos(market, bankrupt))
    bp0 = engine.view(bankrupt).bankruptcy_price
    assert bp0 % spec.tick_size == 0 and bp0 == execution_price(spec, before)
    lp = engine.view(bankrupt).liquidation_price
    # The crash: past BP by crash_ppm of it (negative: between BP and LP), on the tick.
    tick = spec.tick_size
    move = bp0 * c.crash_ppm // 1_000_000
    raw = bp0 - move if c.long else bp0 + move
    mark = (raw // tick) * tick if c.long else -(-raw // tick) * tick
    mark = min(mark, lp) if c.long else max(mark, lp)
    if mark <= 0:
        return
    budget, reason = d.funds[asset].limit(market, 0, spec.fund_loss_cap)
    out = d.mark(market, mark)
    assert d.check() is None

    if c.book:
        [order] = of_type(out, LiquidationOrder)
        liq = engine.liquidations[order.liquidation_id]
        assert order.worst_price % tick == 0
        assert order.worst_price == execution_price(spec, before, liq.reserved)
        side = order.side
        for share, ticks in c.fills:
            pos = d.pos(market, bankrupt)
            if pos is None or pos.liquidation == 0:
                break
            x = max(abs(pos.size) * share // 1_000_000, 1)
            price = order.worst_price - side * ticks * tick  # at or better than worst
            if price <= 0:
                continue
            out += d.apply(LiquidationFill(market, order.liquidation_id, 50, price, x))
            d.check()
        pos = d.pos(market, bankrupt)
        if pos is not None and pos.liquidation:
            rest = _copy(pos)
            expect_price = adl_price(spec, rest, mark, liq.reserved)
            reserved = liq.reserved
            out += d.apply(LiquidationDone(market, order.liquidation_id))
            expect = close_result(spec, rest, expect_price)[1]
            [event] = of_type(out, AdlEvent)
            assert (event.price, event.reason) == (expect_price, AdlReason.NO_BOOK)
            assert _paid(d, asset, market, order.liquidation_id)[0] == max(-expect, 0) <= reserved
            assert event.fund_paid == max(-expect, 0)
    else:
        _, remaining = takeover_result(spec, before, before.size, mark)
        adl = of_type(out, AdlEvent)
        first = [e for e in adl if e.liquidation_id == 1]
        if remaining >= 0 or -remaining <= budget:
            assert first == []  # the fund (or the surplus) covers it: no ADL
            paid, _ = _paid(d, asset, market, 1)
            assert paid == max(-remaining, 0)
        else:
            price = adl_price(spec, before, mark, budget)
            left = close_result(spec, before, price)[1]
            [event] = first
            assert (event.price, event.reason) == (price, reason)
            paid, fee = _paid(d, asset, market, 1)
            # The fund paid what closing there needed, never more than its budget (a
            # rounding surplus is its fee)...
            assert paid == max(-left, 0) <= min(budget, -remaining)
            assert (
                fee == waterfall(left, event.closed_notional, spec.liquidation_fee_cap_ppm, 0).fee
            )
            assert event.fund_paid == paid
            # ...and the trader keeps nothing of the fund's money.
            assert d.wallet(asset, bankrupt) == 0
    kind = "inverse" if c.inverse else "linear"
    adl_events = of_type(out, AdlEvent)
    funded = "fund paid part" if any(e.fund_paid for e in adl_events) else "fund paid none"
    filled = "after fills" if of_type(out, LiquidationFill) or c.fills else ""
    note_event(f"{kind} {'book' if c.book else 'takeover'}: {len(adl_events)} ADL, {funded}")
    note_event(f"{'book' if c.book else 'takeover'} {filled}")
    # The guarantee: no counterparty closed at a price worse for it than BP; where the
    # mark has not reached BP (a book order given up early) it closes at the mark, so it
    # loses nothing to the market either.
    for n in of_type(out, AdlNotice):
        # n.side is the counterparty's side: a short buys back (lower is better for it).
        if n.side < 0:
            assert n.price <= max(bp0, mark), (n, bp0, mark)
        else:
            assert n.price >= min(bp0, mark), (n, bp0, mark)
    for e in of_type(out, AdlEvent):
        assert e.overshoot >= 0
        assert e.fund_paid <= e.deficit
    assert d.funds[asset].reserved_total == 0 or engine.liquidations
    d.check()


@pytest.mark.parametrize("inverse", [False, True])
def test_fund_empty_capped_and_drawdown_each_named(inverse: bool) -> None:
    market, asset = (INV, "BTC") if inverse else (M, "USDT")
    entry = 500_000 if inverse else usdt("50000")
    qty = 1_000 if inverse else 20
    for fund, cap, policy, reason in [
        (0, None, 300_000, AdlReason.FUND_EMPTY),
        (10**12, 1, 300_000, AdlReason.MARKET_CAP),
        (1_000, None, 300_000, AdlReason.DRAWDOWN_LIMIT),
    ]:
        spec = (btc_usd_spec if inverse else btc_usdt_spec)(fund_loss_cap=cap)
        d = Desk(spec, policies={asset: FundPolicy(drawdown_limit_ppm=policy)})
        if fund:
            d.inject(asset, fund)
        n = abs(spec.trade_value(qty, entry))
        d.margin(1, market, n // 20)
        d.margin(2, market, 2 * n)
        d.fill(market, 1, 2, entry, qty)
        d.mark(market, entry)
        out = d.mark(market, entry // 2 // spec.tick_size * spec.tick_size)
        [event] = of_type(out, AdlEvent)
        assert event.reason is reason, (fund, cap)
        d.check()


# --- partial policies under random marks: the invariants hold at every step ---------------

steps = st.lists(
    st.one_of(
        # The mark at entry x (1 - drop): long positions cross and, where solvent, step.
        st.tuples(
            st.just("mark"),
            # Within a position's solvent band past its LP, often (see the events).
            st.one_of(
                st.sampled_from([9_000, 9_500, 10_000, 11_000, 37_000, 38_000, 39_000]),
                st.integers(-20_000, 120_000),
            ),
            st.integers(0, 40_000),
        ),
        st.tuples(st.just("fill"), st.integers(1, 1_000_000), st.integers(0, 30)),
        st.tuples(st.just("done"), st.just(0), st.just(0)),
    ),
    min_size=3,
    max_size=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.booleans(),
    st.booleans(),
    st.sampled_from(list(PartialLiquidation)),
    st.sampled_from(list(TakeoverPrice)),
    st.integers(0, 60_000),
    st.sampled_from([0, 200, 5_000]),
    steps,
)
def test_partial_policies_keep_the_invariants(
    inverse: bool,
    book: bool,
    policy: PartialLiquidation,
    price_rule: TakeoverPrice,
    cooldown: int,
    fund_ppm: int,
    seq: list[tuple[str, int, int]],
) -> None:
    market, asset = (INV, "BTC") if inverse else (M, "USDT")
    entry = 500_000 if inverse else usdt("50000")
    kw = {
        "liquidation_mode": LiquidationMode.BOOK if book else LiquidationMode.TAKEOVER,
        "partial_liquidation_policy": policy,
        "partial_cooldown_ms": cooldown,
        "takeover_price": price_rule,
        "liquidation_fee_cap_ppm": 10_000,
    }
    spec = btc_usd_spec(**kw) if inverse else btc_usdt_spec(**kw)  # type: ignore[arg-type]
    d = Desk(spec)
    # Longs and shorts at 10x..80x against one another (the last two in the second
    # risk tier, for tier steps), and a rich book counterparty.
    lots = [200, 200, 30_000, 30_000] if inverse else [40, 40, 1_200, 1_200]
    sizes: dict[int, int] = {}
    for i, (lot, lev) in enumerate(zip(lots, (10, 40, 25, 80), strict=True)):
        n = abs(spec.trade_value(lot, entry))
        d.margin(10 + i, market, n // lev)
        d.margin(20 + i, market, n // (lev + 5))
        d.fill(market, 10 + i, 20 + i, entry, lot)
        sizes[10 + i] = sizes[20 + i] = lot
    if fund_ppm:
        d.inject(asset, n * fund_ppm // 100)
    d.margin(50, market, 100 * n)
    d.mark(market, entry)
    now, tick = 0, spec.tick_size
    for kind, a, b in seq:
        engine = d.markets[market]
        working = [x for x in engine.liquidations.values() if x.stage is Stage.WORKING]
        if kind == "mark":
            now += b
            mark = max((entry - entry * a // 1_000_000) // tick * tick, tick)
            d.mark(market, mark, ts=now)
        elif kind == "fill" and working:
            liq = working[0]
            pos = engine.positions[liq.account]
            side = -1 if pos.size > 0 else 1
            x = max((liq.quantity - liq.filled) * a // 1_000_000, 1)
            price = liq.worst_price - side * b * tick
            # The book's counterparty may itself be refused (its margin went back to
            # its wallet when it went flat, so a new position of it is liquidated).
            if price > 0:
                with contextlib.suppress(Rejected):
                    d.apply(LiquidationFill(market, liq.id, 50, price, x, ts=now))
        elif kind == "done" and working:
            d.apply(LiquidationDone(market, working[0].id, ts=now))
        d.check()
        for liq in d.markets[market].liquidations.values():
            if liq.stage is Stage.COOLING:
                assert policy is PartialLiquidation.FRACTION and liq.until > now
                note_event("a position cooled down")
    settled = of_type(d.published, LiquidationSettled)
    partial = [x for x in settled if 0 < x.quantity < sizes.get(x.account, 0)]
    note_event(f"{policy.value}: {'partial steps' if partial else 'no partial step'}")
