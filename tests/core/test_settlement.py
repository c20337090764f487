"""Market lifecycle: halt, close-only, and final settlement at one price (riskd.core.settlement)."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.core import (
    AccountLiquidation,
    Code,
    Deposit,
    FundFlow,
    FundingRate,
    FundKind,
    LiquidationMode,
    MarginTransfer,
    MarkPrice,
    Rejected,
    SetMarginMode,
    TierTable,
    digest,
)
from riskd.core import cross_margin as cm
from riskd.core.events import (
    Fill,
    MarketSettled,
    MarketStatusChange,
    MarketStatusChanged,
    MarkGuardOverride,
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


# --- cross-margin positions --------------------------------------------------------

BTCX, ETHX = "BTC-USDT", "ETH-USDT"
FLAT = TierTable([(0, 100, 5_000)])  # 100x, MMR 0.5 %
QTY = 1_000  # 1.000 of the base asset
MAKER = 9


def cross_desk() -> Desk:
    """BTC and ETH at 10,000; MAKER (isolated, 100,000 in each) takes the other side."""
    d = Desk(btc_usdt_spec(BTCX, tiers=FLAT), btc_usdt_spec(ETHX, tiers=FLAT))
    d.inject("USDT", 1_000_000 * U)
    d.margin(MAKER, BTCX, 100_000 * U)
    d.margin(MAKER, ETHX, 100_000 * U)
    d.mark(BTCX, usdt("10000"))
    d.mark(ETHX, usdt("10000"))
    return d


def go_cross(d: Desk, account: int, wallet: int, *markets: str) -> None:
    for m in markets:
        d.apply(SetMarginMode(m, account, True))
    d.apply(Deposit(account, "USDT", wallet))


def equity(d: Desk, account: int) -> int:
    legs = [leg for _, leg in d.engine.cross_legs("USDT", account)]
    v = cm.account_view(account, "USDT", legs, d.wallet("USDT", account), [0] * len(legs))
    return v.equity


def settled(out: list[object]) -> MarketSettled:
    [s] = of_type(out, MarketSettled)
    return s


def test_a_cross_winner_and_a_cross_loser_settle_into_their_wallets() -> None:
    d = cross_desk()
    go_cross(d, 1, 1_000 * U, BTCX)
    go_cross(d, 2, 1_000 * U, BTCX)
    d.fill(BTCX, 1, 2, usdt("10000"), QTY)  # 1 long, 2 short, both cross
    fund = d.fund("USDT")
    out = d.apply(SettleMarket(BTCX, usdt("10400")))
    d.check()
    assert d.wallet("USDT", 1) == 1_400 * U and d.wallet("USDT", 2) == 600 * U
    s = settled(out)
    # MAKER's flat BTC margin (100,000) goes back too.
    assert (s.positions, s.cross_positions, s.paid_out) == (3, 2, 102_000 * U)
    assert (s.charged, s.deficit, s.haircut) == (0, 0, 0)
    assert d.fund("USDT") == fund
    assert not d.engine.cross_legs("USDT", 1) and not d.engine.cross_legs("USDT", 2)


def test_a_cross_loser_whose_profit_elsewhere_covers_the_loss() -> None:
    """1 is long BTC and ETH with 1,000; ETH is up 1,000.  BTC settled 1,000 down:
    more than its band, so its cross wallet pays the rest, out of the ETH band
    (backed by ETH's profit).  Nobody is bankrupt, the winner keeps everything."""
    d = cross_desk()
    go_cross(d, 1, 1_000 * U, BTCX, ETHX)
    d.fill(BTCX, 1, MAKER, usdt("10000"), QTY)
    d.fill(ETHX, 1, MAKER, usdt("10000"), QTY)
    d.mark(ETHX, usdt("11000"))
    band = d.pos(BTCX, 1).margin
    assert 0 < band < 1_000 * U
    fund, maker = d.fund("USDT"), d.pos(BTCX, MAKER).margin
    out = d.apply(SettleMarket(BTCX, usdt("9000")))
    d.check()
    s = settled(out)
    assert (s.cross_positions, s.charged, s.deficit, s.haircut) == (1, 1_000 * U - band, 0, 0)
    assert d.wallet("USDT", MAKER) == maker + 1_000 * U  # the winner's whole profit
    assert equity(d, 1) == 1_000 * U  # 1,000 + 1,000 (ETH) − 1,000 (BTC)
    assert d.wallet("USDT", 1) == 0 and d.pos(ETHX, 1).margin == 0  # all ETH profit now
    assert not of_type(out, AccountLiquidation) and d.fund("USDT") == fund


def test_a_bankrupt_cross_account_is_paid_for_by_the_winners_isolated_and_cross() -> None:
    """1 (cross, 1,000) long 1 BTC; settled at 8,000 it loses 2,000: its deficit of
    1,000 is shared by the winners pro rata to profit, 2 (cross, short 0.5) and
    MAKER (isolated, short 0.5), 500 each; the fund is not touched."""
    d = cross_desk()
    go_cross(d, 1, 1_000 * U, BTCX)
    go_cross(d, 2, 1_000 * U, BTCX)
    d.fill(BTCX, 1, 2, usdt("10000"), QTY // 2)
    d.fill(BTCX, 1, MAKER, usdt("10000"), QTY // 2)
    fund, maker = d.fund("USDT"), d.pos(BTCX, MAKER).margin
    out = d.apply(SettleMarket(BTCX, usdt("8000")))
    d.check()
    s = settled(out)
    assert (s.cross_positions, s.deficit, s.haircut, s.charged) == (2, 1_000 * U, 1_000 * U, 0)
    assert d.wallet("USDT", 1) == 0
    assert d.wallet("USDT", 2) == 1_500 * U  # 1,000 + 1,000 profit − 500
    assert d.wallet("USDT", MAKER) == maker + 500 * U
    assert d.fund("USDT") == fund and not of_type(out, FundFlow)


def test_bankrupt_with_a_position_elsewhere_ends_at_zero_equity_then_is_liquidated() -> None:
    """1 long BTC and ETH with 1,000, ETH down 300: BTC settled at 8,000 (−2,000)
    leaves it 1,300 short.  That comes from BTC's winner (1,300 ≤ what BTC lost
    beyond its band), never the fund: the account is at equity 0 after the
    settlement, and then liquidated in ETH by the ordinary path (0 ≤ MM)."""
    d = cross_desk()
    go_cross(d, 1, 1_000 * U, BTCX, ETHX)
    d.fill(BTCX, 1, MAKER, usdt("10000"), QTY)
    d.fill(ETHX, 1, MAKER, usdt("10000"), QTY)
    d.mark(ETHX, usdt("9700"))
    maker = d.pos(BTCX, MAKER).margin
    out = d.apply(SettleMarket(BTCX, usdt("8000")))
    d.check()
    s = settled(out)
    assert (s.deficit, s.haircut) == (1_300 * U, 1_300 * U)
    assert d.wallet("USDT", MAKER) >= maker + 700 * U  # its 2,000 less the deficit
    [notice] = of_type(out, AccountLiquidation)
    assert (notice.equity, notice.markets) == (0, (ETHX,))
    # Of the fund's flows, none is the settled market's but its backstop's own margin.
    assert all(f.market == ETHX for f in of_type(out, FundFlow))


def test_the_winners_pay_no_more_than_the_cross_position_lost_in_their_market() -> None:
    """1 (1,000) long BTC, up 1,000 at its mark, and long ETH, down 1,500: equity 500.
    BTC settled at 9,500 loses 500 there, and the unrealised 1,000 that held the
    account up is gone: 1,000 short.  BTC's winner pays only BTC's loss (500); the
    rest is ETH's loss, liquidated in ETH by the ordinary path (the fund's part)."""
    d = cross_desk()
    go_cross(d, 1, 1_000 * U, BTCX, ETHX)
    d.fill(BTCX, 1, MAKER, usdt("10000"), QTY)
    d.fill(ETHX, 1, MAKER, usdt("10000"), QTY)
    d.mark(BTCX, usdt("11000"))
    d.mark(ETHX, usdt("8500"))
    assert equity(d, 1) == 500 * U and d.pos(BTCX, 1).margin < 0  # ETH leans on BTC
    out = d.apply(SettleMarket(BTCX, usdt("9500")))
    d.check()
    s = settled(out)
    assert (s.deficit, s.haircut) == (500 * U, 500 * U)
    [notice] = of_type(out, AccountLiquidation)
    assert (notice.equity, notice.policy, notice.markets) == (-500 * U, "bankrupt", (ETHX,))
    assert all(f.market == ETHX for f in of_type(out, FundFlow))


def test_settlement_waits_for_a_cross_accounts_liquidation_or_guard_elsewhere() -> None:
    d = cross_desk()
    go_cross(d, 1, 1_000 * U, BTCX, ETHX)
    d.fill(BTCX, 1, MAKER, usdt("10000"), QTY)
    d.fill(ETHX, 1, MAKER, usdt("10000"), QTY)
    d.apply(MarkGuardOverride(ETHX, True))  # ETH's mark held guarded by the operator
    r = assert_rejected(
        d.engine, SettleMarket(BTCX, usdt("10000")), Code.FAILED_PRECONDITION, "market"
    )
    assert "account 1" in r.message and ETHX in r.message and "guarded" in r.message
    d.apply(MarkGuardOverride(ETHX, False))
    d.apply(SettleMarket(BTCX, usdt("10000")))
    d.check()


def test_settlement_of_cross_positions_is_the_same_as_closing_fills_when_solvent() -> None:
    """Settling at P gives a solvent cross account what closing fills at P would."""

    def book() -> Desk:
        d = cross_desk()
        go_cross(d, 1, 1_000 * U, BTCX, ETHX)
        d.fill(BTCX, 1, MAKER, usdt("10000"), QTY)
        d.fill(ETHX, MAKER, 1, usdt("10000"), QTY // 2)
        d.mark(ETHX, usdt("9000"))
        return d

    a, b = book(), book()
    a.apply(SettleMarket(BTCX, usdt("9800")))
    b.apply(MarketStatusChange(BTCX, "close_only"))
    b.fill(BTCX, MAKER, 1, usdt("9800"), QTY)
    a.check(), b.check()
    assert equity(a, 1) == equity(b, 1) == 1_000 * U - 200 * U + 500 * U
    assert a.wallet("USDT", MAKER) == b.wallet("USDT", MAKER)  # its BTC margin came back


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 5), st.integers(1, 5), st.integers(1, 50)),
        min_size=1,
        max_size=10,
    ),
    st.sets(st.integers(1, 5), min_size=1),
    st.integers(100, 2_000),
    st.integers(-300, 300),
    st.integers(-100, 100),
    st.booleans(),
)
def test_random_cross_books_settle_exactly_and_leave_nobody_below_zero(
    trades: list[tuple[bool, int, int, int]],
    crossed: set[int],
    wallet: int,
    move_permille: int,
    other_permille: int,
    first: bool,
) -> None:
    """Accounts 1-5, some cross in both markets, trade BTC and ETH; ETH's mark moves,
    then one market is settled anywhere: every unit is conserved, no wallet or
    cross equity is below zero, and the fund moves only by the other market's
    ordinary liquidations (and the backstop's own margin)."""
    d = cross_desk()
    for account in range(1, 6):
        if account in crossed:
            go_cross(d, account, wallet * U, BTCX, ETHX)
        else:
            d.margin(account, BTCX, 5_000 * U)
            d.margin(account, ETHX, 5_000 * U)
    for in_btc, buyer, seller, qty in trades:
        if buyer != seller:
            with contextlib.suppress(Rejected):
                d.fill(BTCX if in_btc else ETHX, buyer, seller, usdt("10000"), qty * 40)
    sym, other = (BTCX, ETHX) if first else (ETHX, BTCX)
    d.mark(other, usdt("10000") + usdt("10000") * other_permille // 1_000)
    d.check()
    fund = d.fund("USDT")
    price = usdt("10000") + usdt("10000") * move_permille // 1_000
    out = d.apply(SettleMarket(sym, price))
    d.check()
    assert not d.markets[sym].positions
    flows = of_type(out, FundFlow)
    assert all(f.market == other or f.kind is FundKind.BACKSTOP_RETURN for f in flows)
    assert d.fund("USDT") == fund + sum(f.amount for f in flows)
    if not of_type(out, AccountLiquidation):
        assert all(f.kind is FundKind.BACKSTOP_RETURN for f in flows)
    for account in crossed:
        assert equity(d, account) >= 0 or d.pos(other, account).liquidation
