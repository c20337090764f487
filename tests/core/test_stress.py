"""Stress coverage in core: worked examples, and the O(log n + k) walk against brute force."""

from __future__ import annotations

import copy

import pytest
from _kit import BTC, Desk, U, btc_usd_spec, btc_usdt_spec, usdt
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.core import BACKSTOP_ACCOUNT, FundPolicy, MarketEngine
from riskd.core.liquidation import takeover_result
from riskd.core.stress import (
    DEFAULT_MOVES_PPM,
    check_moves,
    coverage,
    fund_budget,
    move_label,
    moved_price,
    shortfall_at,
)

M = "BTC-USDT"
HOUSE = 999


def test_moved_price_rounds_away_from_the_mark() -> None:
    assert moved_price(usdt("50000"), -100_000, 10) == usdt("45000")
    assert moved_price(usdt("50000.10"), -50_000, 10) == usdt("47500.00")  # 47,500.095 down
    assert moved_price(usdt("50000.10"), 50_000, 10) == usdt("52500.20")  # 52,500.105 up
    assert moved_price(10, -999_999, 10) == 10  # never below one tick
    assert moved_price(2**63 - 10, 300_000, 10) == (2**63 - 1) // 10 * 10  # nor above int64


def test_move_labels_and_checks() -> None:
    assert [move_label(m) for m in DEFAULT_MOVES_PPM] == [
        "-30%", "-20%", "-10%", "-5%", "+5%", "+10%", "+20%", "+30%",
    ]  # fmt: skip
    assert move_label(125_000) == "+12.5%" and move_label(-1) == "-0.0001%"
    assert check_moves(DEFAULT_MOVES_PPM) is None
    assert check_moves([0]) and check_moves([-1_000_000]) and check_moves([5, 5])
    assert check_moves(list(range(1, 40)))


def test_worked_example_linear() -> None:
    # Long 0.1 BTC @ 50,000 with 500 USDT (10x): bankrupt at 45,000.  At -20 % (40,000)
    # it owes 0.1 x 5,000 = 500 USDT beyond its margin.  A long at 2x (margin 2,500, BP
    # 25,000) is liquidatable at -30 % only if its MM exceeds its balance: it is not
    # bankrupt there, so it owes nothing.  The fund holds 300 (no drawdown guard here):
    # payable 300, 60 %.
    d = Desk(btc_usdt_spec(), policies={"USDT": FundPolicy(1_000_000)})
    d.inject("USDT", 300 * U)
    d.open(M, 1, HOUSE, usdt("50000"), 100, 500 * U, 10**6 * U)
    d.open(M, 2, HOUSE, usdt("50000"), 100, 2_500 * U, 0)
    d.mark(M, usdt("50000"))
    m = d.markets[M]
    assert shortfall_at(m, usdt("40000")) == (1, 500 * U)
    assert shortfall_at(m, usdt("45000")) == (0, 0)  # exactly at bankruptcy: R = 0
    assert shortfall_at(m, usdt("44999.90")) == (1, 10_000)  # one tick beyond: 0.01 USDT
    budget = fund_budget(d.funds["USDT"], M, 0, None)
    assert budget == 300 * U
    rows = {r.move_ppm: r for r in coverage(m, budget)}
    r = rows[-200_000]
    assert (r.price, r.positions, r.shortfall, r.payable, r.coverage_ppm) == (
        usdt("40000"), 1, 500 * U, 300 * U, 600_000,
    )  # fmt: skip
    r = rows[-300_000]  # 35,000: 1 owes 1,000; 2 (BP 25,000) nothing
    assert (r.positions, r.shortfall, r.payable, r.coverage_ppm) == (1, 1_000 * U, 300 * U, 300_000)
    assert rows[-50_000].shortfall == 0 and rows[-50_000].coverage_ppm == 1_000_000
    # The house is short 0.2 with a million: no rise here bankrupts it.
    assert all(rows[m].shortfall == 0 for m in (50_000, 100_000, 200_000, 300_000))


def test_worked_example_inverse() -> None:
    # 2 BTC long (1,000 x 100 USD contracts) @ 50,000 with 0.1 BTC: bankrupt at 47,619.05.
    # At -10 % (45,000) it owes 100,000 (1/45,000 - 1/50,000) - 0.1 = 0.1222... BTC,
    # rounded against the trader as the takeover would: 12,222,223 quantums.
    d = Desk(btc_usd_spec())
    d.open("BTC-USD", 1, HOUSE, 500_000, 1_000, 10_000_000, 100 * BTC)
    d.mark("BTC-USD", 500_000)
    m = d.markets["BTC-USD"]
    rows = {r.move_ppm: r for r in coverage(m, 0)}
    r = rows[-100_000]
    assert (r.price, r.positions, r.shortfall, r.payable, r.coverage_ppm) == (
        450_000, 1, 12_222_223, 0, 0,
    )  # fmt: skip


def test_no_mark_no_rows() -> None:
    d = Desk(btc_usdt_spec())
    assert coverage(d.markets[M], 0) == []
    assert shortfall_at(d.markets[M], 100) == (0, 0)


def test_budget_follows_the_market_cap_and_drawdown_guard() -> None:
    # Fund 1,000; the market may lose 100 in the window: payable is capped at 100.
    d = Desk(btc_usdt_spec(fund_loss_cap=100 * U), policies={"USDT": FundPolicy(300_000)})
    d.inject("USDT", 1_000 * U)
    d.open(M, 1, HOUSE, usdt("50000"), 100, 500 * U, 10**6 * U)
    d.mark(M, usdt("50000"))
    fund = d.funds["USDT"]
    assert fund_budget(fund, M, 0, 100 * U) == 100 * U
    assert fund_budget(fund, M, 0, None) == 300 * U  # drawdown: 30 % of the 1,000 peak
    [r] = coverage(d.markets[M], fund_budget(fund, M, 0, 100 * U), [-200_000])
    assert (r.shortfall, r.payable, r.coverage_ppm) == (500 * U, 100 * U, 200_000)


# --- against brute force ------------------------------------------------------------------


def _brute(engine: MarketEngine, price: int) -> tuple[int, int]:
    count = total = 0
    for pos in engine.positions.values():
        if not pos.size or pos.liquidation or pos.account == BACKSTOP_ACCOUNT:
            continue
        _, r = takeover_result(engine.spec, pos, pos.size, price)
        if r < 0:
            count += 1
            total -= r
    return count, total


_trader = st.tuples(
    st.integers(-400, 400).filter(bool),  # size in steps, signed
    st.integers(49_000, 51_000),  # entry, whole units
    st.integers(50, 5_000),  # margin, whole units
)


@pytest.mark.parametrize("inverse", [False, True])
@settings(max_examples=40, deadline=None)
@given(
    traders=st.lists(_trader, min_size=1, max_size=25),
    mark=st.integers(48_500, 51_500),
    moves=st.lists(
        st.sampled_from(DEFAULT_MOVES_PPM) | st.integers(-500_000, 500_000).filter(bool),
        min_size=1,
        max_size=6,
    ),
    fund=st.integers(0, 20_000),
    cap=st.none() | st.integers(0, 20_000),
)
def test_walk_equals_brute_force(
    inverse: bool,
    traders: list[tuple[int, int, int]],
    mark: int,
    moves: list[int],
    fund: int,
    cap: int | None,
) -> None:
    if inverse:
        spec, unit, px = btc_usd_spec(fund_loss_cap=cap and cap * 10**5), 10**5, 10
    else:
        spec, unit, px = btc_usdt_spec(fund_loss_cap=cap and cap * U), U, 100
    d = Desk(spec)
    sym, asset = spec.symbol, spec.asset.symbol
    if fund:
        d.inject(asset, fund * unit, ts=0)
    for i, (size, entry, margin) in enumerate(traders):
        acct = 1 + i
        d.margin(acct, sym, margin * unit)
        d.margin(HOUSE, sym, 10**7 * unit)  # a flat house gets its margin back: top it up
        price = entry * px // spec.tick_size * spec.tick_size
        if size > 0:
            d.fill(sym, acct, HOUSE, price, size, ts=1_000 * i)
        else:
            d.fill(sym, HOUSE, acct, price, -size, ts=1_000 * i)
    # Marks may liquidate some (the fund pays or ADL runs): the state is then a real one.
    d.mark(sym, 50_000 * px, ts=60_000)
    d.mark(sym, mark * px // spec.tick_size * spec.tick_size, ts=120_000)
    engine = d.markets[sym]
    assert engine.mark is not None
    for move in moves:
        price = moved_price(engine.mark, move, spec.tick_size)
        assert shortfall_at(engine, price) == _brute(engine, price)
    for ts in (120_000, 120_000 + 9 * 3_600_000):
        real = copy.deepcopy(d.funds[asset]).budget(sym, ts, spec.fund_loss_cap)
        assert fund_budget(d.funds[asset], sym, ts, spec.fund_loss_cap) == real
    budget = fund_budget(d.funds[asset], sym, 120_000, spec.fund_loss_cap)
    for r in coverage(engine, budget, moves):
        assert r.payable == min(r.shortfall, budget)
        assert r.coverage_ppm * r.shortfall <= r.payable * 10**6 or not r.shortfall
        assert 0 <= r.coverage_ppm <= 10**6
    d.check()
