"""Funding: longs pay shorts when the rate is positive, zero-sum, residue to the fee pool."""

from __future__ import annotations

import pytest
from _kit import BTC, Desk, U, assert_rejected, btc_usd_spec, btc_usdt_spec, of_type, usdt
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.core import (
    BACKSTOP_ACCOUNT,
    Code,
    FundingRate,
    LiquidationMode,
    LiquidationSettled,
    Position,
)
from riskd.core.funding import funding_transfers
from riskd.core.margin import margin_balance

M = "BTC-USDT"
SPEC = btc_usdt_spec()
MARK = usdt("50000")
BP_1 = 10_000  # 0.01 % in 1e-8 units


def pos(account: int, size: int, margin: int, spec=SPEC, price: int = MARK) -> Position:  # type: ignore[no-untyped-def]
    p = Position(account)
    p.trade(size, spec.trade_value(size, price))
    p.margin = margin
    return p


def test_longs_pay_shorts_when_rate_positive() -> None:
    ps = [pos(1, 20, 100 * U), pos(2, 10, 100 * U), pos(3, -30, 100 * U)]
    deltas, residue = funding_transfers(SPEC, ps, MARK, BP_1)
    # 1,000 and 500 USDT of notional at 0.01 %: 0.10 and 0.05 USDT.
    assert deltas == {1: -100_000, 2: -50_000, 3: 150_000}
    assert residue == 0


def test_shorts_pay_longs_when_rate_negative() -> None:
    ps = [pos(1, 20, 100 * U), pos(2, 10, 100 * U), pos(3, -30, 100 * U)]
    deltas, residue = funding_transfers(SPEC, ps, MARK, -BP_1)
    assert deltas == {3: -150_000, 1: 100_000, 2: 50_000}
    assert residue == 0


def test_zero_rate_moves_nothing() -> None:
    assert funding_transfers(SPEC, [pos(1, 20, U), pos(2, -20, U)], MARK, 0) == ({}, 0)


def test_rounding_residue_goes_to_the_fee_pool() -> None:
    # Long 0.007 (350 USDT) at 0.010001 %: 35,003.5 quantums, rounded up to 35,004; shared
    # 3:2:2 among the shorts, each share rounded down; 1 quantum left for the fee pool.
    ps = [pos(1, 7, 100 * U), pos(2, -3, U), pos(3, -2, U), pos(4, -2, U)]
    deltas, residue = funding_transfers(SPEC, ps, MARK, 10_001)
    assert deltas == {1: -35_004, 2: 15_001, 3: 10_001, 4: 10_001}
    assert residue == 1
    assert sum(deltas.values()) + residue == 0


def test_payment_rounds_up_for_payers() -> None:
    # 0.001 BTC at 50,000 = 50 USDT; at 1e-8 the exact payment is 0.5 quantum -> 1.
    deltas, residue = funding_transfers(SPEC, [pos(1, 1, U), pos(2, -1, U)], MARK, 1)
    assert deltas == {1: -1, 2: 1} and residue == 0


def test_payers_are_capped_at_their_margin() -> None:
    ps = [pos(1, 20, 30_000), pos(2, 20, 0), pos(3, -40, 100 * U)]
    deltas, residue = funding_transfers(SPEC, ps, MARK, BP_1)
    assert deltas == {1: -30_000, 3: 30_000}  # 2 has nothing to pay with
    assert residue == 0


def test_inverse_funding_in_btc() -> None:
    spec = btc_usd_spec()
    ps = [pos(1, 1_000, BTC, spec, 500_000), pos(2, -1_000, BTC, spec, 500_000)]
    deltas, residue = funding_transfers(spec, ps, 500_000, BP_1)
    assert deltas == {1: -20_000, 2: 20_000}  # 2 BTC x 0.01 %
    assert residue == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=-500, max_value=500).filter(bool), st.integers(0, 10 * U)),
        min_size=1,
        max_size=10,
    ),
    st.integers(min_value=-(10**8) + 1, max_value=10**8 - 1),
    st.integers(min_value=1, max_value=200_000).map(lambda t: t * 10),
)
def test_funding_is_zero_sum_and_never_overdraws(
    book: list[tuple[int, int]], rate: int, mark: int
) -> None:
    ps = [pos(i + 1, size, margin) for i, (size, margin) in enumerate(book)]
    deltas, residue = funding_transfers(SPEC, ps, mark, rate)
    assert sum(deltas.values()) + residue == 0
    assert residue >= 0
    if not any(p.size and (p.size > 0) != (rate > 0) for p in ps):
        assert (deltas, residue) == ({}, 0)  # nobody to receive: nobody pays
        return
    for p in ps:
        delta = deltas.get(p.account, 0)
        assert p.margin + delta >= 0
        pays = rate != 0 and (p.size > 0) == (rate > 0)
        if pays:
            due = -((-abs(p.size) * mark * 10 * abs(rate)) // 10**8)  # ceil, linear notional
            # Capped at the margin and at the margin balance at the mark: funding
            # never leaves a position bankrupt (so never costs the insurance fund).
            balance = margin_balance(SPEC, p, mark)
            assert delta == -min(due, max(min(p.margin, balance), 0))
            if balance >= 0:
                assert balance + delta >= 0
        else:
            assert delta >= 0


def test_funding_never_leaves_a_payer_bankrupt() -> None:
    # Long 0.1 BTC from 50,000 with 100 USDT margin, mark 49,500: margin balance 50.
    p = pos(1, 100, 100 * U)
    mark = usdt("49500")
    assert margin_balance(SPEC, p, mark) == 50 * U
    deltas, residue = funding_transfers(SPEC, [p, pos(2, -100, 100 * U)], mark, 10**8 - 1)
    assert deltas == {1: -50 * U, 2: 50 * U} and residue == 0


# --- through the engine ---------------------------------------------------------------


def test_engine_funding_moves_margin_and_residue() -> None:
    d = Desk(btc_usdt_spec())
    d.margin(1, M, 100 * U)
    for a, size in ((2, 3), (3, 2), (4, 2)):
        d.margin(a, M, 10 * U)
        d.fill(M, 1, a, MARK, size)
    d.mark(M, MARK)
    fund_before = d.fund("USDT")
    margins = {a: d.pos(M, a).margin for a in (1, 2, 3, 4)}
    assert d.apply(FundingRate(M, 10_001)) == []
    after = {a: d.pos(M, a).margin for a in (1, 2, 3, 4)}
    assert {a: after[a] - margins[a] for a in after} == {
        1: -35_004,
        2: 15_001,
        3: 10_001,
        4: 10_001,
    }
    assert d.markets[M].fee_pool == 1
    assert d.fund("USDT") == fund_before  # funding never touches the fund
    d.check()


def test_funding_can_trigger_a_liquidation() -> None:
    d = Desk(btc_usdt_spec())
    d.open(M, 1, 2, MARK, 20, 500 * U, 1_000 * U)
    d.mark(M, usdt("25200"))  # long 1: B = 4, MM = 2.016
    # 1 pays 504 x 0.5 % = 2.52 USDT: B 1.48 <= MM -> liquidated in the same step.
    out = d.apply(FundingRate(M, 500_000))
    assert [s.account for s in of_type(out, LiquidationSettled)] == [1]
    d.check()


def test_positions_in_liquidation_neither_pay_nor_receive() -> None:
    d = Desk(btc_usdt_spec(liquidation_mode=LiquidationMode.BOOK))
    d.open(M, 1, 2, MARK, 20, 500 * U, 1_000 * U)
    d.open(M, 3, 2, MARK, 20, 1_000 * U, 0)
    d.mark(M, usdt("25100"))  # 1 is being liquidated (book order working)
    assert d.pos(M, 1).liquidation
    before = {a: d.pos(M, a).margin for a in (1, 2, 3)}
    d.apply(FundingRate(M, BP_1))
    after = {a: d.pos(M, a).margin for a in (1, 2, 3)}
    # Only 3 pays (502 x 0.01 % = 0.0502), all of it to 2; 1 is frozen.
    assert {a: after[a] - before[a] for a in after} == {1: 0, 2: 50_200, 3: -50_200}
    assert d.markets[M].fee_pool == 0
    d.check()


@pytest.mark.parametrize(
    ("event", "code", "field"),
    [
        (FundingRate(M, 10**8), Code.INVALID_ARGUMENT, "rate_e8"),
        (FundingRate(M, -(10**8)), Code.INVALID_ARGUMENT, "rate_e8"),
        (FundingRate("NOPE", 1), Code.NOT_FOUND, "market"),
    ],
)
def test_bad_funding_rejected(event: FundingRate, code: Code, field: str) -> None:
    d = Desk(btc_usdt_spec())
    d.open(M, 1, 2, MARK, 20, 500 * U, 500 * U)
    d.mark(M, MARK)
    assert_rejected(d.engine, event, code, field)


def test_funding_before_any_mark_rejected() -> None:
    d = Desk(btc_usdt_spec())
    d.open(M, 1, 2, MARK, 20, 500 * U, 500 * U)
    assert_rejected(d.engine, FundingRate(M, BP_1), Code.FAILED_PRECONDITION, "market")


def test_the_backstop_neither_pays_nor_receives_funding() -> None:
    backstop = pos(BACKSTOP_ACCOUNT, 100, 100 * U)
    deltas, residue = funding_transfers(
        SPEC, [backstop, pos(1, 100, 100 * U), pos(2, -200, 100 * U)], MARK, BP_1
    )
    assert BACKSTOP_ACCOUNT not in deltas
    assert deltas == {1: -500_000, 2: 500_000} and residue == 0
    deltas, _ = funding_transfers(SPEC, [backstop, pos(2, -100, 100 * U)], MARK, -BP_1)
    assert deltas == {}  # the short would pay; its only counterparty is the fund's
