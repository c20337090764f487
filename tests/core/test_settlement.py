"""Market lifecycle: halt, close-only, and final settlement at one price (riskd.core.settlement)."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.core import (
    Code,
    FundFlow,
    FundingRate,
    FundKind,
    LiquidationMode,
    MarginTransfer,
    MarkPrice,
    Rejected,
    digest,
)
from riskd.core.events import (
    Fill,
    MarketSettled,
    MarketStatusChange,
    MarketStatusChanged,
    SettleMarket,
)
from riskd.core.market_status import MarketStatus
from riskd.core.settlement import haircuts

from ._kit import BTC, Desk, U, assert_rejected, btc_usd_spec, btc_usdt_spec, of_type, usdt

M = "BTC-USDT"


def desk() -> Desk:
    d = Desk(btc_usdt_spec())
    d.inject("USDT", 100_000 * U)
    d.mark(M, usdt("50000"))
    # 1 long 1 BTC with 5,000 USDT, 2 short it with 5,000 USDT.
    d.open(M, 1, 2, usdt("50000"), 1_000, 5_000 * U, 5_000 * U)
    return d


def test_settlement_closes_everything_at_the_price_and_delists() -> None:
    d = desk()
    fund = d.fund("USDT")
    out = d.apply(SettleMarket(M, usdt("51000"), 7))
    m = d.markets[M]
    assert m.status is MarketStatus.SETTLED and not m.positions and not m.index.crossed(1)
    assert d.wallet("USDT", 1) == 6_000 * U and d.wallet("USDT", 2) == 4_000 * U
    assert d.fund("USDT") == fund  # the fund is not touched
    [settled] = of_type(out, MarketSettled)
    assert (settled.price, settled.positions, settled.paid_out) == (5_100_000, 2, 10_000 * U)
    assert [c.status for c in of_type(out, MarketStatusChanged)] == ["settled"]
    d.check()
    # Delisted: every input is refused on `market`, and nothing changes.
    for x in (
        MarkPrice(M, usdt("50000")),
        Fill(M, 99, 1, 2, usdt("50000"), 1),
        FundingRate(M, 1_000),
        MarginTransfer(1, M, 1 * U),
        SettleMarket(M, usdt("50000")),
        MarketStatusChange(M, "open"),
    ):
        assert_rejected(d.engine, x, Code.FAILED_PRECONDITION, "market")


def test_a_loser_bankrupt_at_the_price_is_paid_for_by_the_winners_not_the_fund() -> None:
    d = Desk(btc_usdt_spec())
    d.inject("USDT", 100_000 * U)
    d.mark(M, usdt("50000"))
    d.open(M, 1, 2, usdt("50000"), 1_000, 5_000 * U, 1_000 * U)  # 2 short, 50x
    d.margin(3, M, 5_000 * U)
    d.fill(M, 3, 2, usdt("50000"), 1_000)  # 2 short 2 BTC with 1,000: deeply bankrupt at 52,000
    # The mark never went there (the settlement price is the operator's).
    d.apply(SettleMarket(M, usdt("52000")))
    # 2 lost 4,000 with 1,000: its deficit of 3,000 comes off the winners'
    # profits (2,000 each), pro rata: 1,500 each.
    assert d.wallet("USDT", 2) == 0
    assert d.wallet("USDT", 1) == d.wallet("USDT", 3) == 5_500 * U
    assert d.fund("USDT") == 100_000 * U
    d.check()


def test_haircuts_round_against_the_winners_and_never_exceed_a_profit() -> None:
    assert haircuts([2, 1], 0) == [0, 0]
    assert haircuts([2, 1], 2) == [2, 1]  # ceil(4/3), ceil(2/3)
    assert haircuts([3, 3], 10) == [3, 3]
    assert haircuts([], 5) == []


def test_settlement_waits_for_liquidations_in_progress() -> None:
    d = Desk(btc_usdt_spec(liquidation_mode=LiquidationMode.BOOK))
    d.inject("USDT", 100_000 * U)
    d.mark(M, usdt("50000"))
    d.open(M, 1, 2, usdt("50000"), 1_000, 1_000 * U, 5_000 * U)
    d.mark(M, usdt("49000"))  # 1 is being liquidated through the book
    assert d.markets[M].liquidations
    assert_rejected(d.engine, SettleMarket(M, usdt("49000")), Code.FAILED_PRECONDITION, "market")


def test_settlement_waits_for_cross_positions_to_close() -> None:
    """A cross position's loss may need its account's wallet: refused, naming the
    way out (close-only, close them, settle); once it is closed, settled."""
    from riskd.core import Deposit, SetMarginMode

    d = desk()
    d.apply(SetMarginMode(M, 3, True))
    d.apply(Deposit(3, "USDT", 10_000 * U))
    d.fill(M, 3, 1, usdt("50000"), 100)  # 3 buys 0.1 BTC in cross from 1
    r = assert_rejected(
        d.engine, SettleMarket(M, usdt("50000")), Code.FAILED_PRECONDITION, "market"
    )
    assert "account 3" in r.message and "close_only" in r.message
    d.apply(MarketStatusChange(M, "close_only"))
    d.fill(M, 2, 3, usdt("50000"), 100)  # closed: both sides shrink
    d.apply(SettleMarket(M, usdt("50000")))
    assert d.markets[M].status is MarketStatus.SETTLED
    d.check()


def test_a_bad_settlement_price_is_refused_on_price() -> None:
    d = desk()
    assert_rejected(d.engine, SettleMarket(M, 0), Code.INVALID_ARGUMENT, "price")
    assert_rejected(d.engine, SettleMarket(M, 5_000_001), Code.INVALID_ARGUMENT, "price")
    assert_rejected(d.engine, SettleMarket("NOPE", 10), Code.NOT_FOUND, "market")


def test_halted_markets_take_no_fills_and_close_only_ones_only_shrinking_ones() -> None:
    d = desk()
    m = d.markets[M]
    d.margin(3, M, 1_000 * U)
    out = d.apply(MarketStatusChange(M, "halted", 5))
    assert m.status is MarketStatus.HALTED
    assert [(c.previous, c.status) for c in of_type(out, MarketStatusChanged)] == [
        ("open", "halted")
    ]
    assert_rejected(
        d.engine, Fill(M, 50, 2, 1, usdt("50000"), 1), Code.FAILED_PRECONDITION, "market"
    )
    d.mark(M, usdt("50100"))  # marks and funding go on
    d.apply(FundingRate(M, 1_000))
    d.apply(MarketStatusChange(M, "close_only"))
    d.fill(M, 2, 1, usdt("50000"), 100)  # both sides shrink
    assert_rejected(
        d.engine, Fill(M, 51, 3, 1, usdt("50000"), 1), Code.FAILED_PRECONDITION, "buyer_account"
    )
    d.apply(MarketStatusChange(M, "open"))
    d.fill(M, 3, 1, usdt("50000"), 1)
    d.check()


def test_status_changes_are_checked() -> None:
    d = desk()
    assert_rejected(d.engine, MarketStatusChange(M, "open"), Code.FAILED_PRECONDITION, "status")
    assert_rejected(d.engine, MarketStatusChange(M, "settled"), Code.INVALID_ARGUMENT, "status")
    assert_rejected(d.engine, MarketStatusChange(M, "paused"), Code.INVALID_ARGUMENT, "status")
    assert_rejected(d.engine, MarketStatusChange("NOPE", "open"), Code.NOT_FOUND, "market")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 40), st.integers(2, 60)),
        min_size=1,
        max_size=8,
    ),
    st.integers(-400, 400),
    st.booleans(),
)
def test_settlement_conserves_every_unit_on_both_contract_types(
    trades: list[tuple[int, int, int, int]], move_permille: int, linear: bool
) -> None:
    """Random books settled anywhere: invariants hold, the fund pays nothing."""
    if linear:
        spec, price, unit, step = btc_usdt_spec(), usdt("50000"), U, 1
    else:
        spec, price, unit, step = btc_usd_spec(), 500_000, BTC // 10_000, 1
    sym, asset = spec.symbol, spec.asset.symbol
    d = Desk(spec)
    d.inject(asset, 10**9)
    d.mark(sym, price)
    for account in range(1, 7):
        d.margin(account, sym, 10_000 * unit)
    for buyer, seller, qty, _ in trades:
        if buyer != seller:
            with contextlib.suppress(Rejected):  # a refused trade is fine here
                d.fill(sym, buyer, seller, price, qty * step)
    fund, before = d.fund(asset), digest(d.engine)
    tick = spec.tick_size
    at = max(tick, (price + price * move_permille // 1_000) // tick * tick)
    out = d.apply(SettleMarket(sym, at))
    # The fund pays nothing; only its backstop's own margin comes back to it.
    flows = of_type(out, FundFlow)
    assert all(f.kind is FundKind.BACKSTOP_RETURN for f in flows)
    assert d.fund(asset) == fund + sum(f.amount for f in flows) and digest(d.engine) != before
    assert not d.markets[sym].positions
    d.check()
