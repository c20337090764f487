"""The insurance fund: ledger, budget (drawdown limit, per-market caps), reports, no withdrawals."""

from __future__ import annotations

import pytest
from _kit import Desk, U, assert_rejected, btc_usdt_spec, of_type, usdt
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.core import (
    BACKSTOP_ACCOUNT,
    AdlReason,
    Code,
    Deposit,
    FundCredit,
    FundDecision,
    FundFlow,
    FundInjection,
    FundKind,
    FundPolicy,
    InsuranceFund,
    LiquidationFill,
    LiquidationMode,
    LiquidationOrder,
    Rejected,
    ReserveClaim,
    ReserveSettle,
    TakeoverClaim,
    Withdrawal,
)
from riskd.core.units import SUPPLY_CAP

M = "BTC-USDT"
HOUR = 3_600_000
DAY = 24 * HOUR


def claim(
    shortfall: int = 0,
    fee: int = 0,
    wanted: int = 0,
    *,
    lid: int = 1,
    ts: int = 0,
    cap: int | None = None,
    market: str = M,
    notional: int = 1_000 * U,
) -> TakeoverClaim:
    return TakeoverClaim(
        asset="USDT",
        market=market,
        liquidation_id=lid,
        ts=ts,
        notional=notional,
        fee=fee,
        shortfall=shortfall,
        margin_wanted=wanted,
        loss_cap=cap,
    )


def credit(kind: FundKind, amount: int, cause: str, ts: int = 0) -> FundCredit:
    return FundCredit(asset="USDT", market=M, kind=kind, amount=amount, cause=cause, ts=ts)


def seeded(amount: int = 1_000 * U, policy: FundPolicy | None = None) -> InsuranceFund:
    f = InsuranceFund("USDT", policy)
    f.inject(amount, "seed", 0)
    return f


def assert_ledger_consistent(f: InsuranceFund) -> None:
    balance = 0
    for i, e in enumerate(f.ledger, start=1):
        assert e.sequence == i
        assert e.amount != 0
        balance += e.amount
        assert e.balance_after == balance >= 0
    assert balance == f.balance
    assert f.total_inflow - f.total_outflow == f.balance


# --- ledger --------------------------------------------------------------------------


def test_injection_is_a_ledger_entry() -> None:
    f = InsuranceFund("USDT")
    e = f.inject(1_000 * U, "seed", 5)
    assert (e.sequence, e.ts, e.kind, e.market, e.cause, e.amount, e.balance_after) == (
        1,
        5,
        FundKind.INJECTION,
        "",
        "seed",
        1_000 * U,
        1_000 * U,
    )
    assert f.take_flows() == [
        FundFlow(
            asset="USDT",
            market="",
            kind=FundKind.INJECTION,
            amount=1_000 * U,
            balance_after=1_000 * U,
            cause="seed",
            ts=5,
        )
    ]
    assert f.take_flows() == []


@pytest.mark.parametrize(
    ("amount", "cause", "field"),
    [
        (0, "seed", "amount"),
        (-1, "seed", "amount"),
        (2**63, "seed", "amount"),
        (1, "s\u00e9ed", "cause"),
        (1, "x" * 129, "cause"),
    ],
)
def test_bad_injection_rejected(amount: int, cause: str, field: str) -> None:
    f = seeded()
    with pytest.raises(Rejected) as info:
        f.inject(amount, cause, 0)
    assert (info.value.code, info.value.field) == (Code.INVALID_ARGUMENT, field)
    assert (f.balance, len(f.ledger)) == (1_000 * U, 1)


def test_injections_stop_at_the_supply_cap_but_fees_still_land() -> None:
    f = seeded(SUPPLY_CAP - 10)
    with pytest.raises(Rejected) as info:
        f.inject(11, "more", 0)
    assert (info.value.code, info.value.field) == (Code.INVALID_ARGUMENT, "amount")
    f.inject(10, "more", 0)
    f.credit(credit(FundKind.TRADING_FEE, 5, "fee"))  # credits are never refused
    assert f.balance == SUPPLY_CAP + 5 <= 2**63 - 1


def test_takeover_books_fee_shortfall_and_backstop_margin_in_order() -> None:
    f = seeded()
    d = f.takeover(claim(shortfall=20 * U, wanted=5 * U, lid=7))
    assert d == FundDecision(market=M, liquidation_id=7, absorbed=True, granted=5 * U)
    assert [(e.kind, e.amount, e.cause) for e in f.ledger[1:]] == [
        (FundKind.SHORTFALL, -20 * U, f"liq:{M}:7"),
        (FundKind.BACKSTOP_MARGIN, -5 * U, f"liq:{M}:7"),
    ]
    f.takeover(claim(fee=3 * U, lid=8))
    assert f.ledger[-1].kind is FundKind.LIQUIDATION_FEE and f.balance == 978 * U
    # What the backstop hands back is an ordinary, explained inflow.
    f.process([credit(FundKind.BACKSTOP_RETURN, 7 * U, "backstop")])
    assert f.ledger[-1].kind is FundKind.BACKSTOP_RETURN and f.balance == 985 * U
    assert_ledger_consistent(f)


def test_zero_credits_are_not_booked() -> None:
    f = seeded()
    f.credit(credit(FundKind.TRADING_FEE, 0, "trade:1"))
    assert len(f.ledger) == 1


# --- budget: never below zero, drawdown, per-market caps -------------------------------


def test_beyond_its_budget_the_fund_pays_what_it_may() -> None:
    f = seeded(100 * U, FundPolicy(drawdown_limit_ppm=1_000_000))
    assert f.budget(M, 0) == 100 * U
    # One quantum too much: all 100 is granted (not nothing), held for the liquidation
    # until the ADL of the rest settles the exact amount; no backstop margin.
    d = f.takeover(claim(shortfall=100 * U + 1, wanted=U))
    assert d == FundDecision(
        market=M, liquidation_id=1, absorbed=False, granted=100 * U, reason=AdlReason.FUND_EMPTY
    )
    assert (f.balance, len(f.ledger), f.reserved_total, f.budget(M, 0)) == (100 * U, 1, 100 * U, 0)
    assert f.takeover(claim(shortfall=1, lid=2)) == FundDecision(
        market=M, liquidation_id=2, absorbed=False, granted=0, reason=AdlReason.FUND_EMPTY
    )
    f.settle(
        ReserveSettle(
            asset="USDT",
            market=M,
            liquidation_id=1,
            ts=0,
            reserved=100 * U,
            shortfall=100 * U - 3,
            fee=0,
        )
    )
    assert (f.balance, f.reserved_total) == (3, 0)
    assert f.ledger[-1].kind is FundKind.SHORTFALL
    # Exactly the balance is payable (100 % drawdown allowed), and then nothing more.
    assert f.takeover(claim(shortfall=3, wanted=U, lid=3)).absorbed
    assert f.balance == 0 and f.budget(M, 0) == 0
    assert f.limit(M, 0) == (0, AdlReason.FUND_EMPTY)
    assert_ledger_consistent(f)


@pytest.mark.parametrize(
    ("balance", "cap", "reason"),
    [
        (0, None, AdlReason.FUND_EMPTY),
        (0, 10 * U, AdlReason.FUND_EMPTY),
        (1_000 * U, None, AdlReason.DRAWDOWN_LIMIT),  # room 300
        (1_000 * U, 200 * U, AdlReason.MARKET_CAP),
        (1_000 * U, 300 * U, AdlReason.MARKET_CAP),  # a tie names the cap
        (1_000 * U, 400 * U, AdlReason.DRAWDOWN_LIMIT),
    ],
)
def test_limit_names_what_binds(balance: int, cap: int | None, reason: AdlReason) -> None:
    f = InsuranceFund("USDT")
    if balance:
        f.inject(balance, "seed", 0)
    d = f.takeover(claim(shortfall=2_000 * U, cap=cap))
    assert (d.absorbed, d.reason) == (False, reason)
    assert d.granted == min(balance * 3 // 10, cap if cap is not None else balance)


def test_drawdown_30_percent_in_8_hours() -> None:
    f = seeded()  # default policy: 30 % over 8 h
    assert f.budget(M, 0) == 300 * U
    d = f.takeover(claim(shortfall=301 * U))
    assert (d.absorbed, d.granted, d.reason) == (False, 300 * U, AdlReason.DRAWDOWN_LIMIT)
    f.settle(
        ReserveSettle(
            asset="USDT", market=M, liquidation_id=1, ts=0, reserved=300 * U, shortfall=0, fee=0
        )
    )  # say the ADL needed none of it
    assert f.takeover(claim(shortfall=200 * U, lid=2, ts=HOUR)).absorbed
    assert f.budget(M, 2 * HOUR) == 100 * U  # the 1,000 peak is still in the window
    d = f.takeover(claim(shortfall=101 * U, lid=3, ts=7 * HOUR))
    assert (d.absorbed, d.granted) == (False, 100 * U)
    f.settle(
        ReserveSettle(
            asset="USDT",
            market=M,
            liquidation_id=3,
            ts=7 * HOUR,
            reserved=100 * U,
            shortfall=0,
            fee=0,
        )
    )
    # The 1,000 was still the balance in minute 60 (before the payment): it stays the
    # peak through minute 540 (9 h) and leaves the window in the minute after.
    assert f.budget(M, 9 * HOUR) == 100 * U
    later = 9 * HOUR + 60_000
    assert f.budget(M, later) == 240 * U  # 30 % of the new 800 peak
    assert f.takeover(claim(shortfall=240 * U, lid=4, ts=later)).absorbed
    assert f.balance == 560 * U
    assert_ledger_consistent(f)


def test_inflows_raise_the_peak() -> None:
    f = seeded()
    f.takeover(claim(shortfall=300 * U))
    assert f.budget(M, 0) == 0
    f.inject(1_000 * U, "top-up", HOUR)
    # Peak 1,700 now: floor 1,190, balance 1,700.
    assert f.budget(M, HOUR) == 510 * U


def test_market_loss_cap_is_cumulative_and_counts_reservations() -> None:
    f = seeded(10_000 * U)
    cap = 50 * U
    assert f.budget(M, 0, cap) == cap
    assert f.budget("ETH-USDT", 0, None) == 3_000 * U  # other markets: drawdown only
    d = f.takeover(claim(shortfall=20 * U, wanted=10 * U, cap=cap))
    assert (d.absorbed, d.granted) == (True, 10 * U)
    assert f.budget(M, 0, cap) == 20 * U  # 20 shortfall + 10 backstop margin used
    r = f.reserve(
        ReserveClaim(
            asset="USDT",
            market=M,
            liquidation_id=2,
            ts=0,
            notional=100 * U,
            wanted=15 * U,
            loss_cap=cap,
        )
    )
    assert r.granted == 15 * U and f.reserved_total == 15 * U
    assert f.budget(M, 0, cap) == 5 * U
    d = f.takeover(claim(shortfall=6 * U, lid=3, cap=cap))
    assert (d.absorbed, d.granted, d.reason) == (False, 5 * U, AdlReason.MARKET_CAP)
    f.settle(
        ReserveSettle(
            asset="USDT", market=M, liquidation_id=3, ts=0, reserved=5 * U, shortfall=0, fee=0
        )
    )
    # Settling releases the reservation; only what was paid keeps counting.
    f.settle(
        ReserveSettle(
            asset="USDT", market=M, liquidation_id=2, ts=0, reserved=15 * U, shortfall=4 * U, fee=0
        )
    )
    assert f.reserved_total == 0
    assert f.budget(M, 0, cap) == 16 * U
    # After the window the market's losses are forgotten.
    assert f.budget(M, 8 * HOUR + 2 * 60_000, cap) == cap
    assert_ledger_consistent(f)


def test_reservations_are_not_spendable_twice() -> None:
    f = seeded(100 * U, FundPolicy(drawdown_limit_ppm=1_000_000))
    assert (
        f.reserve(
            ReserveClaim(asset="USDT", market=M, liquidation_id=1, ts=0, notional=0, wanted=80 * U)
        ).granted
        == 80 * U
    )
    assert f.budget(M, 0) == 20 * U
    assert (
        f.reserve(
            ReserveClaim(asset="USDT", market=M, liquidation_id=2, ts=0, notional=0, wanted=80 * U)
        ).granted
        == 20 * U
    )
    assert f.budget(M, 0) == 0
    assert f.takeover(claim(shortfall=1, lid=3)) == FundDecision(
        market=M, liquidation_id=3, absorbed=False, granted=0, reason=AdlReason.FUND_EMPTY
    )
    with pytest.raises(AssertionError):  # a settlement that does not match is a bug
        f.settle(
            ReserveSettle(
                asset="USDT",
                market=M,
                liquidation_id=1,
                ts=0,
                reserved=80 * U,
                shortfall=81 * U,
                fee=0,
            )
        )


def test_policy_validation() -> None:
    for bad in (
        {"drawdown_limit_ppm": 0},
        {"drawdown_limit_ppm": 1_000_001},
        {"window_ms": 59_999},
    ):
        with pytest.raises(ValueError):
            FundPolicy(**bad)  # type: ignore[arg-type]


ops = st.lists(
    st.tuples(
        st.sampled_from(["inject", "fee", "takeover", "reserve", "settle"]),
        st.integers(min_value=0, max_value=2_000 * U),
        st.integers(min_value=0, max_value=20 * HOUR),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(ops, st.sampled_from([None, 100 * U, 0]))
def test_fund_never_negative_and_ledger_chains(
    seq: list[tuple[str, int, int]], cap: int | None
) -> None:
    f = InsuranceFund("USDT")
    open_reservations: list[tuple[int, int]] = []
    for lid, (op, amount, ts) in enumerate(seq, start=1):
        if op == "inject" and amount:
            f.inject(amount, "seed", ts)
        elif op == "fee":
            f.credit(credit(FundKind.TRADING_FEE, amount, "t", ts))
        elif op == "takeover":
            budget = f.budget(M, ts, cap)
            d = f.takeover(claim(shortfall=amount, wanted=amount // 3, lid=lid, ts=ts, cap=cap))
            assert d.absorbed == (amount <= budget)
            if d.absorbed:
                assert d.granted <= budget - amount
            else:  # the waterfall: all it may, held until the ADL settles it
                assert d.granted == budget and d.reason is not None
                if d.granted:
                    open_reservations.append((lid, d.granted))
        elif op == "reserve":
            d = f.reserve(
                ReserveClaim(
                    asset="USDT",
                    market=M,
                    liquidation_id=lid,
                    ts=ts,
                    notional=0,
                    wanted=amount,
                    loss_cap=cap,
                )
            )
            if d.granted:
                open_reservations.append((lid, d.granted))
        elif open_reservations:
            rid, held = open_reservations.pop(0)
            f.settle(
                ReserveSettle(
                    asset="USDT",
                    market=M,
                    liquidation_id=rid,
                    ts=ts,
                    reserved=held,
                    shortfall=min(amount, held),
                    fee=0,
                )
            )
        assert 0 <= f.reserved_total <= f.balance
    assert_ledger_consistent(f)


# --- daily reports ----------------------------------------------------------------------


def test_daily_report_totals() -> None:
    f = InsuranceFund("USDT")
    f.inject(1_000 * U, "seed", 0)
    f.credit(credit(FundKind.TRADING_FEE, 7 * U, "trade:1", HOUR))
    f.takeover(claim(shortfall=20 * U, wanted=4 * U, lid=1, ts=2 * HOUR, notional=480 * U))
    f.takeover(claim(fee=3 * U, wanted=2 * U, lid=2, ts=DAY + HOUR, notional=500 * U))
    f.credit(credit(FundKind.BACKSTOP_RETURN, U, "backstop", DAY + 2 * HOUR))
    day0, day1 = f.reports[0], f.reports[1]
    assert (day0.opening_balance, day0.closing_balance) == (0, 983 * U)
    assert day0.inflow_by_kind == {FundKind.INJECTION: 1_000 * U, FundKind.TRADING_FEE: 7 * U}
    assert day0.outflow_by_kind == {FundKind.SHORTFALL: 20 * U, FundKind.BACKSTOP_MARGIN: 4 * U}
    assert day0.liquidation_volume == 480 * U
    assert (day1.opening_balance, day1.closing_balance) == (983 * U, 985 * U)
    assert day1.inflow_by_kind == {FundKind.LIQUIDATION_FEE: 3 * U, FundKind.BACKSTOP_RETURN: U}
    assert day1.outflow_by_kind == {FundKind.BACKSTOP_MARGIN: 2 * U}
    assert day1.liquidation_volume == 500 * U
    for r in (day0, day1):
        assert (
            r.opening_balance + sum(r.inflow_by_kind.values()) - sum(r.outflow_by_kind.values())
            == r.closing_balance
        )
    assert sorted(f.reports) == [0, 1]


# --- through the engine --------------------------------------------------------------


def test_engine_fund_flows_mirror_the_ledger() -> None:
    d = Desk(
        btc_usdt_spec(fund_fee_share_ppm=500_000),
        btc_usdt_spec("ETH-USDT", liquidation_mode=LiquidationMode.BOOK),
    )
    flows = of_type(d.inject("USDT", 1_000 * U, ts=1), FundFlow)
    for mk in (M, "ETH-USDT"):
        d.margin(1, mk, 500 * U)
        d.margin(2, mk, 5_000 * U)
        flows += of_type(d.fill(mk, 1, 2, usdt("50000"), 20, buyer_fee=U, seller_fee=U), FundFlow)
        d.mark(mk, usdt("50000"))
    flows += of_type(d.mark(M, usdt("24000"), ts=2), FundFlow)
    out = d.mark("ETH-USDT", usdt("24900"), ts=3)
    flows += of_type(out, FundFlow)
    [order] = of_type(out, LiquidationOrder)
    d.margin(3, "ETH-USDT", 1_000 * U)
    # Filled at the worst price: the whole reservation is paid out as shortfall.
    fill = LiquidationFill("ETH-USDT", order.liquidation_id, 3, order.worst_price, 20, ts=4)
    flows += of_type(d.apply(fill), FundFlow)
    fund = d.funds["USDT"]
    assert [(x.kind, x.amount, x.balance_after, x.market) for x in flows] == [
        (e.kind, e.amount, e.balance_after, e.market) for e in fund.ledger
    ]
    kinds = [e.kind for e in fund.ledger]
    # BTC-USDT gives the fund 50 % of each 1 USDT fee; ETH-USDT (share 0) nothing.
    assert [e.amount for e in fund.ledger if e.kind is FundKind.TRADING_FEE] == [U // 2] * 2
    assert FundKind.SHORTFALL in kinds
    assert_ledger_consistent(fund)
    d.check()


def test_no_way_to_withdraw_from_the_fund() -> None:
    d = Desk(btc_usdt_spec())
    d.inject("USDT", 1_000 * U)
    d.apply(Deposit(1, "USDT", 10 * U))
    before = (d.fund("USDT"), len(d.funds["USDT"].ledger))
    d.apply(Withdrawal(1, "USDT", 10 * U))
    assert (d.fund("USDT"), len(d.funds["USDT"].ledger)) == before
    # Neither the fund's backstop account nor account 0 can withdraw anything.
    assert_rejected(
        d.engine, Withdrawal(BACKSTOP_ACCOUNT, "USDT", 1), Code.INVALID_ARGUMENT, "account"
    )
    assert_rejected(d.engine, Withdrawal(0, "USDT", 1), Code.INVALID_ARGUMENT, "account")
    assert_rejected(d.engine, FundInjection("USDT", -5), Code.INVALID_ARGUMENT, "amount")
    assert d.fund("USDT") == 1_000 * U
    # And no method offers it.
    assert not [n for n in dir(InsuranceFund) if "withdraw" in n.lower()]
