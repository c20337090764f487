"""Cross margin in the pure core: modes, the account's numbers, bands, liquidation.

DOMAIN.md §1–2 and its "Cross, one position" example; conservation and the
invariants are checked after every input (``Desk.check``).
"""

from __future__ import annotations

from _kit import Desk, U, assert_rejected, btc_usdt_spec, of_type, usdt

from riskd.core import (
    AccountLiquidation,
    AdlNotice,
    Code,
    CrossLiquidation,
    Deposit,
    FundingRate,
    LiquidationSettled,
    MarginCall,
    MarginTransfer,
    SetMarginMode,
    TierTable,
    Withdrawal,
    digest,
)
from riskd.core import cross_margin as cm

#: One bracket: 100x (IM 1 %), MMR 0.5 % (the DOMAIN cross example's numbers).
FLAT = TierTable([(0, 100, 5_000)])
BTC, ETH = "BTC-USDT", "ETH-USDT"
QTY = 1000  # 1.000 of the base asset
TRADER, OTHER, MAKER = 1, 2, 3


def desk(**kw: object) -> Desk:
    d = Desk(btc_usdt_spec(BTC, tiers=FLAT, **kw), btc_usdt_spec(ETH, tiers=FLAT, **kw))
    d.inject("USDT", 1_000_000 * U)
    return d


def cross(d: Desk, account: int, *markets: str, deposit: int = 0) -> None:
    for m in markets:
        d.apply(SetMarginMode(m, account, True))
    if deposit:
        d.apply(Deposit(account, "USDT", deposit))


def view(d: Desk, account: int) -> cm.AccountView:
    pairs = d.engine.cross_legs("USDT", account)
    legs = [leg for _, leg in pairs]
    return cm.account_view(account, "USDT", legs, d.wallet("USDT", account), [0] * len(legs))


def step(d: Desk, event: object) -> list[object]:
    out = d.apply(event)
    d.check()
    return out


# --- mode -----------------------------------------------------------------------


def test_mode_switches_only_while_flat() -> None:
    d = desk()
    d.margin(MAKER, BTC, 50_000 * U)
    cross(d, TRADER, BTC, deposit=5_000 * U)
    d.mark(BTC, usdt("10000"))
    d.fill(BTC, TRADER, MAKER, usdt("10000"), QTY)
    d.check()
    assert_rejected(d.engine, SetMarginMode(BTC, TRADER, False), Code.FAILED_PRECONDITION, "cross")
    assert_rejected(d.engine, SetMarginMode("XYZ", TRADER, True), Code.NOT_FOUND, "market")
    # An isolated account with margin but no position is not flat either.
    d.margin(OTHER, ETH, 100 * U)
    assert_rejected(d.engine, SetMarginMode(ETH, OTHER, True), Code.FAILED_PRECONDITION, "cross")
    # A margin transfer makes no sense for a cross account.
    assert_rejected(
        d.engine, MarginTransfer(TRADER, BTC, 10 * U), Code.FAILED_PRECONDITION, "market"
    )
    d.fill(BTC, MAKER, TRADER, usdt("10000"), QTY)  # flat again
    step(d, SetMarginMode(BTC, TRADER, False))
    assert TRADER not in d.markets[BTC].cross


# --- DOMAIN.md "Cross, one position" --------------------------------------------


def test_domain_cross_one_position() -> None:
    """2 BTC long @ 10,000, available 2,000, IM 1 % = 200, MM 0.5 % = 100: the loss
    the account can bear is 2,100, LP = 8,950 with MM held at the entry's 100; riskd
    measures MM at the mark (89.5 at 8,950), so it liquidates a little lower."""
    d = desk()
    d.margin(MAKER, BTC, 100_000 * U)
    cross(d, TRADER, BTC, deposit=2_200 * U)
    d.mark(BTC, usdt("10000"))
    step(d, d_fill(BTC, TRADER, MAKER, "10000", 2 * QTY))
    v = view(d, TRADER)
    assert (v.wallet, v.equity) == (2_200 * U, 2_200 * U)
    assert (v.initial_margin, v.maintenance_margin) == (200 * U, 100 * U)
    assert v.available == 2_000 * U
    assert v.margin_ratio_ppm == -(-100 * 10**6 // 2_200)
    bearable = v.wallet - v.maintenance_margin
    assert 10_000 * U * 2 - bearable == 2 * 8_950 * U  # the example's arithmetic
    lp = v.positions[0].estimated_liquidation_price
    # (2,200 + 2(P − 10,000)) = 0.005 × 2P  →  P = 17,800 / 1.99 = 8,944.72
    assert lp == usdt("8944.70")
    out = step(d, d_mark(BTC, "8950"))
    assert not of_type(out, LiquidationSettled)
    out = step(d, d_mark(BTC, "8944.70"))
    assert len(of_type(out, LiquidationSettled)) == 1
    assert d.pos(BTC, TRADER) is None  # taken over whole


def d_fill(market: str, buyer: int, seller: int, price: str, qty: int) -> object:
    from riskd.core import Fill

    d_fill.n += 1  # type: ignore[attr-defined]
    return Fill(market, 10_000 + d_fill.n, buyer, seller, usdt(price), qty)  # type: ignore[attr-defined]


d_fill.n = 0  # type: ignore[attr-defined]


def d_mark(market: str, price: str) -> object:
    from riskd.core import MarkPrice

    return MarkPrice(market, usdt(price))


# --- two markets ----------------------------------------------------------------


def two_markets(wallet: int) -> Desk:
    """TRADER long 1 BTC @ 10,000 and long 1 ETH @ 10,000 (same numbers, two markets)."""
    d = desk()
    d.margin(MAKER, BTC, 100_000 * U)
    d.margin(MAKER, ETH, 100_000 * U)
    cross(d, TRADER, BTC, ETH, deposit=wallet)
    d.mark(BTC, usdt("10000"))
    d.mark(ETH, usdt("10000"))
    step(d, d_fill(BTC, TRADER, MAKER, "10000", QTY))
    step(d, d_fill(ETH, TRADER, MAKER, "10000", QTY))
    return d


def test_safe_per_market_but_liquidatable_in_total() -> None:
    """Each leg's loss alone is covered by the wallet; together they are not."""
    d = two_markets(1_000 * U)
    # −450 each: E = 1,000 − 900 = 100 ≤ MM = 2 × 0.005 × 9,550 = 95.5?  No: 100 > 95.5.
    step(d, d_mark(BTC, "9550"))
    out = step(d, d_mark(ETH, "9550"))
    assert not of_type(out, LiquidationSettled)
    assert view(d, TRADER).equity == 100 * U
    # A leg at 9,500 alone would leave E = 500 > MM: safe in isolation of the other.
    out = step(d, d_mark(ETH, "9500"))
    # E = 1,000 − 450 − 500 = 50 ≤ MM = 47.75 + 47.5?  95.25 ≥ 50: liquidatable.
    claims = of_type(out, LiquidationSettled)
    assert {c.market for c in claims} == {BTC, ETH}  # all at once (the default)
    [notice] = of_type(out, AccountLiquidation)  # published once, before the positions
    assert (notice.account, notice.policy, notice.markets) == (TRADER, "all_at_once", (BTC, ETH))
    assert notice.equity == 50 * U and out.index(notice) < out.index(claims[0])
    assert d.pos(BTC, TRADER) is None and d.pos(ETH, TRADER) is None
    settled = of_type(out, LiquidationSettled)
    # The equity (50) was split pro rata to MM; the fund claws it back as the fee.
    assert sum(s.fund_delta for s in settled) == 50 * U
    assert d.wallet("USDT", TRADER) == 0


def test_loss_in_one_market_covered_by_profit_in_another() -> None:
    d = desk()
    d.margin(MAKER, BTC, 100_000 * U)
    d.margin(MAKER, ETH, 100_000 * U)
    cross(d, TRADER, BTC, ETH, deposit=300 * U)
    d.mark(BTC, usdt("10000"))
    d.mark(ETH, usdt("10000"))
    step(d, d_fill(BTC, TRADER, MAKER, "10000", QTY))  # long BTC
    step(d, d_fill(ETH, MAKER, TRADER, "10000", QTY))  # short ETH
    # BTC −1,000 would be far beyond the wallet (300); ETH's +1,000 covers it.
    step(d, d_mark(ETH, "9000"))
    out = step(d, d_mark(BTC, "9000"))
    assert not of_type(out, LiquidationSettled)
    v = view(d, TRADER)
    assert v.equity == 300 * U and v.wallet == 300 * U
    # An isolated position with this margin would be long gone.
    assert v.maintenance_margin == 2 * 45 * U
    # Unrealised profit never leaves: nothing is available (IM 180 > wallet + min(Σu, 0)).
    assert v.available == 300 * U - 180 * U
    assert_rejected(
        d.engine, Withdrawal(TRADER, "USDT", 121 * U), Code.FAILED_PRECONDITION, "amount"
    )
    step(d, Withdrawal(TRADER, "USDT", 120 * U))
    assert view(d, TRADER).wallet == 180 * U


def test_withdrawal_never_against_unrealised_profit() -> None:
    d = two_markets(1_000 * U)
    step(d, d_mark(BTC, "12000"))  # +2,000 unrealised
    v = view(d, TRADER)
    assert v.available == 1_000 * U - v.initial_margin  # profit does not count
    assert_rejected(
        d.engine, Withdrawal(TRADER, "USDT", v.available + 1), Code.FAILED_PRECONDITION, "amount"
    )
    step(d, Withdrawal(TRADER, "USDT", v.available))
    assert view(d, TRADER).available == 0


def test_step_down_closes_the_largest_mm_first() -> None:
    """Step down (fee cap 0.1 %): closing BTC (the larger MM) releases its MM and
    the account is safe again; all at once would have closed ETH too."""
    d = desk(cross_liquidation=CrossLiquidation.STEP_DOWN, liquidation_fee_cap_ppm=1_000)
    d.margin(MAKER, BTC, 100_000 * U)
    d.margin(MAKER, ETH, 100_000 * U)
    cross(d, TRADER, BTC, ETH, deposit=2_000 * U)
    d.mark(BTC, usdt("10000"))
    d.mark(ETH, usdt("10000"))
    step(d, d_fill(BTC, TRADER, MAKER, "10000", 10 * QTY))  # MM 500
    step(d, d_fill(ETH, TRADER, MAKER, "10000", 2 * QTY))  # MM 100
    # BTC to 9,860: u = −1,400, E = 600, MM = 493 + 100: safe.  9,850: E = 500 ≤ 592.5.
    out = step(d, d_mark(BTC, "9850"))
    claims = of_type(out, LiquidationSettled)
    assert [c.market for c in claims] == [BTC]
    assert d.pos(BTC, TRADER) is None
    assert d.pos(ETH, TRADER) is not None and d.pos(ETH, TRADER).size == 2 * QTY
    v = view(d, TRADER)
    fee = -(-98_500 * U * 1_000 // 10**6)  # 0.1 % of the closed notional
    assert v.equity == 500 * U - fee
    assert v.equity > v.maintenance_margin


def test_cross_bankruptcy_paid_by_the_fund() -> None:
    d = two_markets(1_000 * U)
    step(d, d_mark(ETH, "9400"))  # −600, E = 400 > MM 97: safe
    before = d.fund("USDT")
    out = step(d, d_mark(BTC, "9000"))  # −1,000 more: E = −600
    claims = of_type(out, LiquidationSettled)
    assert sum(-c.fund_delta for c in claims) == 600 * U
    from riskd.core import BACKSTOP_ACCOUNT

    backstop = sum(d.pos(m, BACKSTOP_ACCOUNT).margin for m in (BTC, ETH))
    assert d.fund("USDT") + backstop == before - 600 * U  # the fund's margin grants aside
    assert d.wallet("USDT", TRADER) == 0
    assert d.pos(BTC, TRADER) is None and d.pos(ETH, TRADER) is None


def test_cross_bankruptcy_through_adl() -> None:
    """An empty fund: the account's deficit goes to ADL in both markets, at each
    leg's bankruptcy price (its share of the negative equity as margin)."""
    d = two_markets(1_000 * U)
    d.engine.funds["USDT"].balance = 0  # drained (conservation tracks injections)
    d.engine.funds["USDT"].injected -= 1_000_000 * U
    d.check()
    step(d, d_mark(ETH, "9400"))
    out = step(d, d_mark(BTC, "9000"))
    notices = of_type(out, AdlNotice)
    assert {n.market for n in notices} == {BTC, ETH}
    assert all(n.account == MAKER for n in notices)
    assert d.pos(BTC, TRADER) is None and d.pos(ETH, TRADER) is None
    assert d.wallet("USDT", TRADER) == 0


def test_funding_for_cross() -> None:
    d = two_markets(1_000 * U)
    w = view(d, TRADER).wallet
    step(d, FundingRate(BTC, 1_000_000))  # 1 %: longs pay 100
    assert view(d, TRADER).wallet == w - 100 * U


def test_a_refused_cross_input_changes_nothing() -> None:
    d = two_markets(1_000 * U)
    before = digest(d.engine)
    assert_rejected(
        d.engine, Withdrawal(TRADER, "USDT", 10_000 * U), Code.FAILED_PRECONDITION, "amount"
    )
    assert digest(d.engine) == before


def test_adl_ranks_cross_counterparties_by_their_account_leverage() -> None:
    """Two cross shorts with the same entry (same PnL %): the one whose account is
    more levered is deleveraged first; a cross band's margin balance is its
    notional's share of the account's equity."""
    d = desk()
    d.engine.funds["USDT"].balance = 0  # an empty fund: the bankrupt long goes to ADL
    d.engine.funds["USDT"].injected -= 1_000_000 * U
    cross(d, 11, BTC, deposit=1_000 * U)
    cross(d, 12, BTC, deposit=5_000 * U)
    d.margin(10, BTC, 500 * U)
    d.margin(13, BTC, 10_000 * U)
    d.mark(BTC, usdt("10000"))
    step(d, d_fill(BTC, 10, 11, "10000", QTY))
    step(d, d_fill(BTC, 13, 12, "10000", QTY))
    step(d, d_mark(BTC, "9600"))
    for account, equity in ((11, 1_400 * U), (12, 5_400 * U)):
        v = view(d, account)
        assert v.equity == equity
        band = d.pos(BTC, account)
        assert band.margin + v.positions[0].unrealised == equity  # one leg: all of it
    out = step(d, d_mark(BTC, "9000"))  # account 10 bankrupt: −1,000 + 500
    notices = of_type(out, AdlNotice)
    assert [n.account for n in notices] == [11]


def test_bands_share_the_equity_by_notional() -> None:
    """Two legs of equal notional: each band holds half the equity, so each leg's
    effective leverage is the account's (20x here)."""
    d = two_markets(1_000 * U)
    for m in (BTC, ETH):
        assert d.pos(m, TRADER).margin == 500 * U
    assert d.wallet("USDT", TRADER) == 0  # all of the cross wallet is in the bands
    assert view(d, TRADER).wallet == 1_000 * U


def test_a_fill_beyond_the_band_is_refused() -> None:
    """The band (500 here) is what the account put behind the position: a close or
    a reduction at a price that loses more than it is refused, changing nothing."""
    d = two_markets(1_000 * U)
    from riskd.core import Fill

    far = Fill(BTC, 99, MAKER, TRADER, usdt("9400"), QTY)  # closes at −600
    assert_rejected(d.engine, far, Code.FAILED_PRECONDITION, "seller_account")
    half = Fill(BTC, 98, MAKER, TRADER, usdt("8000"), QTY // 2)  # −1,000 on half
    assert_rejected(d.engine, half, Code.FAILED_PRECONDITION, "seller_account")
    step(d, Fill(BTC, 97, MAKER, TRADER, usdt("9600"), QTY))  # −400: within the band
    assert d.pos(BTC, TRADER) is None
    assert view(d, TRADER).wallet == 600 * U


def test_settling_a_market_with_cross_positions_takes_the_loss_from_the_wallet() -> None:
    """Once refused (a band needs its account's other collateral), now settled: the
    loss beyond BTC's band is taken from the account's cross wallet, through its
    ETH band (riskd.core.settlement; more cases in tests/core/test_settlement.py)."""
    from riskd.core.events import MarketSettled, SettleMarket

    d = two_markets(1_000 * U)
    before = view(d, TRADER)
    out = step(d, SettleMarket(BTC, usdt("9700")))  # −300 on BTC, with a band of 500
    [settled] = of_type(out, MarketSettled)
    assert (settled.cross_positions, settled.deficit, settled.charged) == (1, 0, 0)
    v = view(d, TRADER)
    assert v.equity == before.equity - 300 * U and [p.market for p in v.positions] == [ETH]


def test_margin_call_before_liquidation_and_none_while_safe() -> None:
    """The account is called when a 2 % move against every position (the markets'
    ``margin_call_ppm``) would make it liquidatable: once, before it is liquidated."""
    d = two_markets(1_000 * U)
    for price in ("9900", "9800"):  # E 800, 600: a 2 % fall leaves it safe
        assert not of_type(step(d, d_mark(BTC, price)), MarginCall)
        assert not of_type(step(d, d_mark(ETH, price)), MarginCall)
    # BTC alone at 9,700 (E 500): a 2 % fall of both leaves E 117.6 > MM 95.6.
    assert not of_type(step(d, d_mark(BTC, "9700")), MarginCall)
    assert TRADER not in d.markets[BTC].cross_called
    # Both at 9,700 (E 400): a 2 % fall leaves E 19.6 ≤ MM 95.1: called, in the
    # market of the largest MM (BTC, the first of equals), with the account's numbers.
    [call] = of_type(step(d, d_mark(ETH, "9700")), MarginCall)
    v = view(d, TRADER)
    assert (call.market, call.account) == (BTC, TRADER)
    assert (call.margin_balance, call.maintenance_margin) == (v.equity, v.maintenance_margin)
    assert call.liquidation_price == v.positions[0].estimated_liquidation_price > 0
    # Further falls within the band call no more; the crossing liquidates it.
    out: list[object] = []
    for price in ("9650", "9600", "9550", "9500"):
        out += step(d, d_mark(BTC, price))
        out += step(d, d_mark(ETH, price))
    assert not of_type(out, MarginCall)
    assert of_type(out, AccountLiquidation)
    assert d.pos(BTC, TRADER) is None and d.pos(ETH, TRADER) is None
    assert TRADER not in d.markets[BTC].cross_called | d.markets[ETH].cross_called


def test_no_cross_margin_call_with_calls_off() -> None:
    d = Desk(
        btc_usdt_spec(BTC, tiers=FLAT, margin_call_ppm=0),
        btc_usdt_spec(ETH, tiers=FLAT, margin_call_ppm=0),
    )
    d.inject("USDT", 1_000_000 * U)
    d.margin(MAKER, BTC, 100_000 * U)
    d.margin(MAKER, ETH, 100_000 * U)
    cross(d, TRADER, BTC, ETH, deposit=1_000 * U)
    d.mark(BTC, usdt("10000"))
    d.mark(ETH, usdt("10000"))
    step(d, d_fill(BTC, TRADER, MAKER, "10000", QTY))
    step(d, d_fill(ETH, TRADER, MAKER, "10000", QTY))
    out = step(d, d_mark(BTC, "9700")) + step(d, d_mark(ETH, "9700"))
    assert not of_type(out, MarginCall)


def test_a_fill_that_brings_the_account_within_the_call_distance_calls_it_at_once() -> None:
    """Growing BTC to 5 at the mark: safe now (E = 1,000 > MM = 300), but a 2 % move
    against both legs would leave E = −200: the fill's own output calls the account,
    not the next mark."""
    d = two_markets(1_000 * U)
    out = step(d, d_fill(BTC, TRADER, MAKER, "10000", 4 * QTY))
    [call] = of_type(out, MarginCall)
    assert call.account == TRADER
    assert not of_type(out, AccountLiquidation)


def test_a_fill_that_leaves_the_band_clear_needs_no_re_check() -> None:
    d = two_markets(1_000 * U)
    out = step(d, d_fill(BTC, TRADER, MAKER, "10000", QTY // 10))
    assert not of_type(out, MarginCall) and not of_type(out, AccountLiquidation)
    # A re-check would have re-shared the equity by notional (ETH's band below 500).
    assert d.pos(ETH, TRADER).margin == 500 * U
