"""ADL: ranking under both policies, quintiles, allocation, AdlEvent accounting.

The hand-built book (mark 40,000; all shorts, i.e. counterparties of a bankrupt long):

====  ====  ==========  ======  =====================================
acct  size  entry       margin  note
====  ====  ==========  ======  =====================================
11    0.1   50,000      500     u +1,000, PnL% 1/5, B 1,500
12    0.1   50,000      100     u +1,000, PnL% 1/5, B 1,100
13    0.2   45,000      2,000   u +1,000, PnL% 1/9, B 3,000
14    0.1   38,000      500     u −200, PnL% −1/19, B 300
15    0.1   30,000      2,000   u −1,000, PnL% −1/3, B 1,000
16    0.1   50,000      500     identical to 11: tie broken by account
17    0.01  80,000      10      u +400, PnL% 1/2, B 410, high u/M
====  ====  ==========  ======  =====================================
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from _kit import Desk, U, btc_usd_spec, btc_usdt_spec, of_type, usdt
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.core import (
    BACKSTOP_ACCOUNT,
    AdlEvent,
    AdlNotice,
    AdlPolicy,
    FundKind,
    LiquidationDone,
    LiquidationMode,
    LiquidationSettled,
    Position,
    adl,
    violations,
)

M = "BTC-USDT"
MARK = usdt("40000")
# account: (size in 0.001 BTC, entry, margin in USDT)
BOOK = {
    11: (-100, "50000", 500),
    12: (-100, "50000", 100),
    13: (-200, "45000", 2_000),
    14: (-100, "38000", 500),
    15: (-100, "30000", 2_000),
    16: (-100, "50000", 500),
    17: (-10, "80000", 10),
}


def positions(spec) -> list[Position]:  # type: ignore[no-untyped-def]
    out = []
    for acct, (size, entry, margin) in BOOK.items():
        p = Position(acct)
        p.trade(size, spec.trade_value(size, usdt(entry)))
        p.margin = margin * U
        out.append(p)
    return out


def assert_score(got: object, exact: Fraction) -> None:
    """Scores are exact rationals, or (current core) integers: floor(exact x 2**64)."""
    if isinstance(got, Fraction):
        assert got == exact
    else:
        assert got == math.floor(exact * 2**64)


def domain_pnl_leverage(size: int, entry: str, margin: int) -> Fraction:
    """DOMAIN.md §2 classic score, in whole USDT: PnL% x EffLev or PnL% / EffLev."""
    q = Fraction(size, 1_000)
    u = q * (40_000 - int(entry))
    entry_value = abs(q) * int(entry)
    n = abs(q) * 40_000
    b = margin + u
    pnl = u / entry_value
    return pnl * n / b if pnl > 0 else pnl * b / n


def domain_leverage_pnl(size: int, entry: str, margin: int) -> Fraction:
    """Binance variant as riskd defines it: u/M x MM/B; losers below every winner."""
    q = Fraction(size, 1_000)
    u = q * (40_000 - int(entry))
    mm = abs(q) * 40_000 * Fraction(4, 1_000)  # all in the first bracket (MMR 0.4 %)
    if u <= 0:
        return u / margin - 1
    return u / margin * mm / (margin + u)


@pytest.mark.parametrize(
    ("policy", "oracle", "order"),
    [
        (AdlPolicy.PNL_LEVERAGE, domain_pnl_leverage, [12, 11, 16, 17, 13, 14, 15]),
        (AdlPolicy.LEVERAGE_PNL, domain_leverage_pnl, [17, 12, 11, 16, 13, 14, 15]),
    ],
)
def test_ranking(policy: AdlPolicy, oracle, order: list[int]) -> None:  # type: ignore[no-untyped-def]
    spec = btc_usdt_spec(adl_policy=policy)
    pos = positions(spec)
    for p in pos:
        assert_score(adl.score(spec, p, MARK), oracle(*BOOK[p.account]))
    assert [p.account for p in adl.rank(spec, pos, MARK)] == order
    assert [p.account for p in adl.rank(spec, reversed(pos), MARK)] == order


def test_pnl_leverage_scores_by_hand() -> None:
    spec = btc_usdt_spec()
    by = {p.account: adl.score(spec, p, MARK) for p in positions(spec)}
    assert_score(by[11], Fraction(8, 15))
    assert_score(by[12], Fraction(8, 11))
    assert_score(by[13], Fraction(8, 27))
    assert_score(by[14], Fraction(-3, 760))
    assert_score(by[15], Fraction(-1, 12))
    assert by[11] == by[16]  # identical positions: the account id breaks the tie


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, [5]),
        (3, [5, 4, 2]),
        (5, [5, 4, 3, 2, 1]),
        (7, [5, 5, 4, 3, 3, 2, 1]),
        (10, [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]),
    ],
)
def test_quintiles(n: int, expected: list[int]) -> None:
    ranked = [Position(a) for a in range(1, n + 1)]
    q = adl.quintiles(ranked)
    assert [q[a] for a in range(1, n + 1)] == expected
    assert set(q.values()) <= {1, 2, 3, 4, 5}


def test_view_shows_quintile_per_side() -> None:
    d = Desk(btc_usdt_spec())
    for acct, (size, entry, margin) in BOOK.items():
        d.open(M, 99, acct, usdt(entry), -size, 100_000 * U, margin * U)
    d.mark(M, MARK)
    m = d.markets[M]
    got = {a: m.view(a).adl_quintile for a in BOOK}
    assert got == {12: 5, 11: 5, 16: 4, 17: 3, 13: 3, 14: 2, 15: 1}
    assert m.view(99).adl_quintile == 5  # the only long
    d.check()


def test_allocate_takes_each_fully_in_order() -> None:
    a, b, c = Position(1), Position(2), Position(3)
    a.size, b.size, c.size = -10, -20, -5
    assert [(p.account, x) for p, x in adl.allocate([a, b, c], 25)] == [(1, 10), (2, 15)]
    assert [(p.account, x) for p, x in adl.allocate([a, b, c], 35)] == [(1, 10), (2, 20), (3, 5)]
    assert [(p.account, x) for p, x in adl.allocate([a, b, c], 50)] == [(1, 10), (2, 20), (3, 5)]
    assert adl.allocate([a], 0) == []


def test_backstop_inventory_is_the_last_resort() -> None:
    d = Desk(btc_usdt_spec())
    d.inject("USDT", 1_000 * U)
    d.open(M, 11, 12, usdt("50000"), 20, 5_000 * U, 500 * U)
    d.mark(M, usdt("50000"))
    d.mark(M, usdt("80000"))  # 12's short (shortfall 100) passes to the backstop
    assert d.pos(M, BACKSTOP_ACCOUNT).size == -20
    d.open(M, 13, 14, usdt("80000"), 20, 10 * U, 5_000 * U)
    # The backstop's short now scores higher (0.49 vs 0.07) but is ranked last.
    out = d.mark(M, usdt("40000"))  # 13: R = 10 - 800; fund room left 187.20 -> ADL
    assert [(n.account, n.quantity) for n in of_type(out, AdlNotice)] == [(14, 20)]
    assert d.pos(M, BACKSTOP_ACCOUNT).size == -20
    d.check()


# --- AdlEvent accounting ------------------------------------------------------------


def test_adl_event_overshoot_is_tick_rounding_booked_to_fund() -> None:
    # Long 0.03 @ 50,000 with 500 margin: BP 33,333.33..., executed at 33,333.40 (next tick
    # against the trader).  Crash to 30,000: deficit 100, haircut 0.03 x 3,333.40 = 100.002.
    d = Desk(btc_usdt_spec())
    d.open(M, 1, 2, usdt("50000"), 30, 500 * U, 5_000 * U)
    d.mark(M, usdt("50000"))
    out = d.mark(M, usdt("30000"))
    [e] = of_type(out, AdlEvent)
    assert (e.price, e.deficit, e.haircut, e.overshoot) == (
        usdt("33333.40"),
        100 * U,
        100_002_000,
        2_000,
    )
    assert e.overshoot == e.haircut - e.deficit
    assert e.closed_notional == 1_000_002_000
    [s] = of_type(out, LiquidationSettled)
    assert s.fund_delta == e.overshoot
    assert [(x.kind, x.amount) for x in d.funds["USDT"].ledger] == [
        (FundKind.LIQUIDATION_FEE, 2_000)
    ]
    d.check()


def test_adl_event_in_inverse_market() -> None:
    d = Desk(btc_usd_spec())
    d.open("BTC-USD", 1, 2, 500_000, 1_000, 10_000_000, 10**8)  # 2 BTC long, 0.1 BTC margin
    d.mark("BTC-USD", 500_000)
    out = d.mark("BTC-USD", 400_000)  # deep below the bankruptcy price 47,619.0
    [e] = of_type(out, AdlEvent)
    assert e.overshoot == e.haircut - e.deficit
    # Exact BP 47,619.047...: the first 0.5 tick at or above it is 47,619.5.
    assert e.price == 476_195
    assert e.overshoot == 1_995 and e.deficit + e.overshoot == e.haircut
    # deficit at the mark: 0.1 + 100,000 (1/50,000 - 1/40,000) BTC = -0.4 BTC
    assert e.deficit == 40_000_000
    assert [n.account for n in of_type(out, AdlNotice)] == [2]
    d.check()


# --- bugs found, and regressions for those fixed -------------------------------------


def _book_liquidated() -> Desk:
    """Book mode, fund 10,000: long 1 (0.02 @ 50,000, 500) liquidated at 25,100."""
    d = Desk(btc_usdt_spec(liquidation_mode=LiquidationMode.BOOK))
    d.inject("USDT", 10_000 * U)
    d.open(M, 1, 2, usdt("50000"), 20, 500 * U, 5_000 * U)
    d.mark(M, usdt("50000"))
    d.mark(M, usdt("25100"))
    assert d.markets[M].liquidations[1].reserved == 2_008_000
    return d


def test_book_done_adl_at_bankruptcy_price_not_beyond() -> None:
    d = _book_liquidated()
    # At the mark 25,100 the long still has B = 500 - 498 = 2 USDT > 0.
    out = d.apply(LiquidationDone(M, 1))
    [e] = of_type(out, AdlEvent)
    assert e.overshoot == e.haircut - e.deficit
    assert e.price >= usdt("25000")  # DOMAIN.md §2: ADL at the bankruptcy price
    assert e.overshoot >= 0  # actual: price 24,899.60, haircut -4.008, overshoot -4.008
    assert d.fund("USDT") >= 10_000 * U  # actual: 9,997.992 (shortfall 2.008 paid)


def test_partially_deleveraged_counterparty_stays_monitored() -> None:
    # Regression: _adl used to unindex a partially closed counterparty and never re-index it.
    d = Desk(btc_usdt_spec())
    d.margin(1, M, 500 * U)
    d.margin(2, M, 100 * U)  # short 0.01: ranked first, closed fully
    d.margin(3, M, 1_000 * U)  # short 0.02: ranked second, closed by half
    d.margin(4, M, 5_000 * U)
    d.fill(M, 1, 2, usdt("50000"), 10)
    d.fill(M, 1, 3, usdt("50000"), 10)
    d.fill(M, 4, 3, usdt("50000"), 10)
    d.mark(M, usdt("50000"))
    d.mark(M, usdt("20000"))  # 1 bankrupt, fund 0: ADL against 2 then half of 3
    p3 = d.pos(M, 3)
    assert (p3.size, p3.margin) == (-10, 1_250 * U)
    assert violations(d.engine) == []  # was: "open position of 3 is not indexed"
    # 3's short (BP 175,000) must still be liquidated when the mark crosses it.
    out = d.mark(M, usdt("180000"))
    assert 3 in [s.account for s in of_type(out, LiquidationSettled)]


def _counterparty_insolvent_at_bp(mode: str) -> tuple[Desk, list[object]]:
    """Long 1 goes to ADL while the only short (3) is healthy at the mark but would be
    bankrupt at 1's bankruptcy price (25,000 against its 20,000 / 19,000 entry)."""
    if mode == "book_mark_moved":
        d = Desk(btc_usdt_spec(liquidation_mode=LiquidationMode.BOOK))
        d.open(M, 1, 2, usdt("50000"), 20, 500 * U, 1_000 * U)
        d.mark(M, usdt("50000"))
        d.mark(M, usdt("25100"))  # 1's liquidation order works (worst price 25,000) ...
        d.mark(M, usdt("20000"))  # ... while the market falls further.
        d.open(M, 2, 3, usdt("20000"), 20, 0, 20 * U)  # 2 closes, 3 opens short @ 20,000
        d.check()  # 3 is healthy at the mark: B 20 > MM 1.6
        out = d.apply(LiquidationDone(M, 1))  # ADL of 1 at 25,000 would cost 3 100
    else:
        d = Desk(btc_usdt_spec())
        d.mark(M, usdt("20000"))
        d.open(M, 2, 3, usdt("19000"), 20, 1_000 * U, 30 * U)  # 3 short @ 19,000
        d.margin(1, M, 500 * U)
        # 2 sells its long to 1 at 50,000: 1 is bankrupt at the mark, fund 0 -> ADL.
        out = d.fill(M, 1, 2, usdt("50000"), 20)
    return d, out


@pytest.mark.parametrize("mode", ["book_mark_moved", "takeover_off_mark_fill"])
def test_adl_never_drives_a_counterparty_negative(mode: str) -> None:
    # Regression: ADL used to close 3 at 25,000 anyway; its margin went to -80 / -90 and
    # was swept into a negative wallet.
    d, out = _counterparty_insolvent_at_bp(mode)
    assert [n.account for n in of_type(out, AdlNotice)] != [3]
    assert violations(d.engine) == []
    assert d.wallet("USDT", 3) >= 0
    assert d.pos(M, 3).size == -20 and d.pos(M, 3).margin >= 0


def test_waiting_adl_resumes_when_counterparties_appear() -> None:
    d = Desk(btc_usdt_spec(liquidation_mode=LiquidationMode.BOOK))
    d.open(M, 1, 2, usdt("50000"), 20, 0, 0)  # both sides without margin
    d.mark(M, usdt("50000"))  # both liquidated: each is the other's only counterparty
    d.apply(LiquidationDone(M, 1))
    d.apply(LiquidationDone(M, 2))
    assert len(d.markets[M].liquidations) == 2  # both wait for ADL counterparties
    d.open(M, 3, 4, usdt("50000"), 20, 1_000 * U, 1_000 * U)  # counterparties appear
    d.mark(M, usdt("50010"))
    assert d.markets[M].liquidations == {}  # actual: both still AWAITING_ADL


@pytest.mark.parametrize("mode", ["book_mark_moved", "takeover_off_mark_fill"])
def test_adl_waiting_for_a_solvent_counterparty_resumes(mode: str) -> None:
    d, _ = _counterparty_insolvent_at_bp(mode)
    [liq] = d.markets[M].liquidations.values()
    assert liq.account == 1  # waiting: 3 cannot pay 25,000
    d.open(M, 5, 6, usdt("20000"), 20, 5_000 * U, 5_000 * U)  # 6: a solvent short
    d.mark(M, usdt("20000"))
    assert d.markets[M].liquidations == {}  # actual: 1 still waits
    assert d.pos(M, 1) is None


# --- pro_rata_risk: the bankrupt quantity shared by risk, not queued -------------------


def _oracle_split(caps: list[int], weights: list[int], quantity: int) -> list[Fraction]:
    """Exact water-filling: x_i = min(cap_i, lam * w_i) with sum x_i = quantity."""
    capped: set[int] = set()
    while True:
        left = quantity - sum(caps[i] for i in capped)
        total = sum(w for i, w in enumerate(weights) if i not in capped)
        lam = Fraction(left, total) if total else Fraction(0)
        new = {i for i in range(len(caps)) if i not in capped and lam * weights[i] >= caps[i]}
        if not new:
            return [
                Fraction(caps[i]) if i in capped else lam * weights[i] for i in range(len(caps))
            ]
        capped |= new


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 50).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 40), min_size=n, max_size=n),
            st.lists(st.integers(1, 10**30), min_size=n, max_size=n),
        )
    ),
    st.sampled_from([1, 2, 5]),
    st.data(),
)
def test_split_is_exact_capped_and_within_a_step_of_pro_rata(
    cw: tuple[list[int], list[int]], step: int, data: st.DataObject
) -> None:
    caps = [c * step for c in cw[0]]
    weights = cw[1]
    quantity = data.draw(st.integers(0, sum(caps) // step)) * step
    got = adl.split(caps, weights, quantity, step)
    assert sum(got) == quantity
    assert all(0 <= x <= c and x % step == 0 for x, c in zip(got, caps, strict=True))
    for x, ideal, c in zip(got, _oracle_split(caps, weights, quantity), caps, strict=True):
        assert x == c if ideal >= c else ideal - step < x < ideal + step
    assert adl.split(caps, weights, quantity, step) == got  # deterministic


def test_split_largest_remainder_ties_go_to_the_earlier_item() -> None:
    assert adl.split([10, 10, 10], [1, 1, 1], 10, 1) == [4, 3, 3]
    assert adl.split([10, 10, 10], [1, 1, 2], 10, 1) == [3, 2, 5]
    assert adl.split([1, 100], [100, 1], 50, 1) == [1, 49]  # the first is capped
    with pytest.raises(ValueError):
        adl.split([1], [1], 2, 1)


def _shorts(spec, rows):  # type: ignore[no-untyped-def]
    """rows: (account, size in steps (>0), entry, margin in USDT) -> short positions."""
    out = []
    for acct, size, entry, margin in rows:
        p = Position(acct)
        p.trade(-size, spec.trade_value(-size, usdt(entry)))
        p.margin = margin * U
        out.append(p)
    return out


def test_pro_rata_risk_shares_by_profit_times_leverage() -> None:
    spec = btc_usdt_spec(adl_policy=AdlPolicy.PRO_RATA_RISK)
    # At 40,000 all shorts from 50,000 earn 10,000 per BTC; 21 has twice the size and
    # margin of 22 (same leverage): twice its risk.  23 has 22's size at twice the margin.
    pos = _shorts(spec, [(21, 200, "50000", 2_000), (22, 100, "50000", 1_000),
                         (23, 100, "50000", 2_000), (24, 100, "38000", 500)])  # fmt: skip
    r = {p.account: adl.risk(spec, p, MARK) for p in pos}
    assert r[24] == 0  # at a loss: no weight
    assert r[21] == 2 * r[22]
    # u x N/B: 22 = 1,000 x 4,000/2,000, 23 = 1,000 x 4,000/3,000
    assert (r[22], r[23]) == (
        math.floor(Fraction(2_000 * U) * 2**64),
        math.floor(Fraction(4_000 * U, 3) * 2**64),
    )
    ranked = adl.rank(spec, pos, MARK)
    got = {p.account: x for p, x in adl.allocate(ranked, 90, spec, MARK)}
    # weights 2 : 1 : 2/3 -> 90 x (6/11, 3/11, 2/11) = 49.09, 24.55, 16.36
    assert got == {21: 49, 22: 25, 23: 16}
    assert sum(got.values()) == 90
    # More than the profitable side holds: the rest comes from 24, queue-style.
    got = {p.account: x for p, x in adl.allocate(ranked, 450, spec, MARK)}
    assert got == {21: 200, 22: 100, 23: 100, 24: 50}


def test_pro_rata_risk_pool_is_bounded_to_the_first_ranked() -> None:
    # 20 identical winners, quantity 10: the pool stops once it holds 8 x 10.
    spec = btc_usdt_spec(adl_policy=AdlPolicy.PRO_RATA_RISK)
    pos = _shorts(spec, [(100 + i, 10, "50000", 500) for i in range(20)])
    read = []

    def ranked():  # type: ignore[no-untyped-def]
        for p in adl.rank(spec, pos, MARK):
            read.append(p.account)
            yield p

    got = [(p.account, x) for p, x in adl.allocate(ranked(), 10, spec, MARK)]
    assert adl.POOL_FACTOR == 8 and len(read) == 8
    assert got == [(100, 2), (101, 2), *((100 + i, 1) for i in range(2, 8))]


def test_queue_policies_unchanged_with_spec() -> None:
    spec = btc_usdt_spec()
    pos = _shorts(spec, [(21, 200, "50000", 2_000), (22, 100, "50000", 1_000)])
    ranked = adl.rank(spec, pos, MARK)
    assert [(p.account, x) for p, x in adl.allocate(ranked, 250, spec, MARK)] == [
        (p.account, x) for p, x in adl.allocate(ranked, 250)
    ]


def _crash(policy: AdlPolicy, shorts: list[tuple[int, int, int]]) -> tuple[Desk, list[object]]:
    """Long 1 (0.03 @ 50,000, margin 500) against ``shorts`` (account, steps, margin USDT)
    at 50,000; account 99 longs the rest.  Mark 30,000: 1 is bankrupt, the fund is empty."""
    d = Desk(btc_usdt_spec(adl_policy=policy))
    d.margin(1, M, 500 * U)
    d.margin(99, M, 10**6 * U)
    d.mark(M, usdt("50000"))
    want = 30
    for acct, size, margin in shorts:
        d.margin(acct, M, margin * U)
        take = min(size, want)
        want -= take
        if take:
            d.fill(M, 1, acct, usdt("50000"), take)
        if size - take:
            d.fill(M, 99, acct, usdt("50000"), size - take)
    return d, d.mark(M, usdt("30000"))


def test_pro_rata_risk_closes_fewer_whole_positions_than_the_queue() -> None:
    # A skewed population: ten small shorts at 10x on top of the queue, one big one at 2x.
    shorts = [(10 + i, 10, 50) for i in range(10)] + [(30, 1_000, 25_000)]
    closures = {}
    for policy in (AdlPolicy.PNL_LEVERAGE, AdlPolicy.PRO_RATA_RISK):
        d, out = _crash(policy, shorts)
        notices = of_type(out, AdlNotice)
        [e] = of_type(out, AdlEvent)
        assert sum(n.quantity for n in notices) == 30 == e.quantity
        assert {n.price for n in notices} == {e.price}
        closures[policy] = sum(1 for n in notices if d.pos(M, n.account) is None)
        hit = {n.account for n in notices}
        if policy is AdlPolicy.PRO_RATA_RISK:
            # Risk u x N/B: 200 x 300/250 = 240 each for the small ones, 20,000 x 30,000 /
            # 45,000 = 13,333.3 for the big one: 30 x 13,333.3/15,733.3 = 25.4 -> 25, the
            # small ones 0.46 -> 0, and the 5 steps left go to the largest remainders
            # (the small ones, in rank order).
            assert {n.account: n.quantity for n in notices} == {30: 25, 10: 1, 11: 1, 12: 1,
                                                                13: 1, 14: 1}  # fmt: skip
        else:
            assert hit == {10, 11, 12}  # queue: the first three, whole
        d.check()
    assert closures == {AdlPolicy.PNL_LEVERAGE: 3, AdlPolicy.PRO_RATA_RISK: 0}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(3, 60), st.integers(20, 3_000)), min_size=1, max_size=12).filter(
        lambda rows: sum(s for s, _ in rows) >= 30
    ),
)
def test_pro_rata_risk_through_the_engine(rows: list[tuple[int, int]]) -> None:
    """Exact quantity, nobody over its size or below zero, conservation, whatever the mix;
    fewer or equal whole closures than the queue when the shorts share entry and leverage."""
    shorts = [(10 + i, s, m) for i, (s, m) in enumerate(rows)]
    whole = {}
    for policy in (AdlPolicy.PNL_LEVERAGE, AdlPolicy.PRO_RATA_RISK):
        d, out = _crash(policy, shorts)
        notices = of_type(out, AdlNotice)
        assert sum(n.quantity for n in notices) == 30
        size = {a: s for a, s, _ in shorts}
        assert all(0 < n.quantity <= size[n.account] for n in notices)
        assert len({n.account for n in notices}) == len(notices)
        d.check()  # conservation, no negative margin or wallet, indexes consistent
        whole[policy] = sum(1 for n in notices if n.quantity == size[n.account])
    same_leverage = [(10 + i, s, 5 * s) for i, (s, _) in enumerate(rows)]
    if sum(s for _, s, _ in same_leverage) >= 60:
        counts = []
        for policy in (AdlPolicy.PNL_LEVERAGE, AdlPolicy.PRO_RATA_RISK):
            d, out = _crash(policy, same_leverage)
            size = {a: s for a, s, _ in same_leverage}
            counts.append(sum(1 for n in of_type(out, AdlNotice) if n.quantity == size[n.account]))
        assert counts[1] == 0 <= counts[0]


def test_adl_counterparties_are_found_lazily() -> None:
    """The queue stops at the first counterparties that cover a bankrupt position:
    compiled, a generator expression would become a list and test every ranked
    position's margin for each ADL (a quadratic all-ADL cascade, issue 17)."""
    d = _book_liquidated()
    m = d.markets[M]
    found = m.liquidator._counterparties(m.positions[1].size, usdt("25000"), 0)
    assert iter(found) is found  # an iterator, not a list built up front
    assert next(found).account == 2 and next(found, None) is None
