"""Margin, liquidation and bankruptcy prices: DOMAIN.md §3 worked examples and exactness.

Not applicable to riskd's core, hence not tested here: the "Cross, one position"
example (riskd is isolated-margin only), the "Bankruptcy quote" dYdX example
(cross-collateral USDC balances), "Socialised loss" (Drift; not implemented) and
"Hyperliquid MM" (a tier-table convention, not engine arithmetic).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest
from _kit import (
    BTC,
    BTC_ASSET,
    USDT_ASSET,
    Desk,
    U,
    btc_usd_spec,
    btc_usdt_spec,
    of_type,
    usdt,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from riskd.core import (
    BACKSTOP_ACCOUNT,
    INT64_MAX,
    ContractType,
    LiquidationSettled,
    MarketSpec,
    Position,
    Rejected,
    TierTable,
)
from riskd.core.fill_sanity import check_side
from riskd.core.liquidation import close_result, execution_price, liquidation_fee
from riskd.core.liquidation_machine import LiquidationMachine
from riskd.core.margin import (
    NEVER_LONG,
    NEVER_SHORT,
    _threshold,
    bankruptcy_threshold,
    initial_margin,
    is_bankrupt,
    is_liquidatable,
    liquidation_threshold,
    maintenance_margin,
    margin_balance,
    notional,
    unrealised,
)


def make_pos(spec: MarketSpec, size: int, price: int, margin: int) -> Position:
    pos = Position(1)
    pos.trade(size, spec.trade_value(size, price))
    pos.margin = margin
    return pos


# --- DOMAIN.md §3 worked examples ---------------------------------------------


def test_binance_isolated_lp_25100_40() -> None:
    # DOMAIN.md §3 "Binance LP": wallet 500 USDT isolated, long 0.02 BTC @ 50,000 (20x),
    # MMR 0.4 %, cum 0 -> LP = 25,100.40.
    d = Desk(btc_usdt_spec())
    d.open("BTC-USDT", 1, 2, usdt("50000"), 20, long_margin=500 * U, short_margin=1_000 * U)
    d.mark("BTC-USDT", usdt("50000"))
    view = d.markets["BTC-USDT"].view(1)
    assert view.liquidation_price == usdt("25100.40")
    assert view.bankruptcy_price == usdt("25000")
    assert view.entry_price == usdt("50000")
    assert (view.margin, view.maintenance_margin, view.initial_margin) == (500 * U, 4 * U, 8 * U)

    # One tick above the LP: nothing happens.
    assert of_type(d.mark("BTC-USDT", usdt("25100.50")), LiquidationSettled) == []
    assert d.pos("BTC-USDT", 1).size == 20
    assert not d.markets["BTC-USDT"].view(1).in_liquidation

    # At the LP: liquidated (takeover at the mark; surplus 2.008 USDT clawed back).
    settled = of_type(d.mark("BTC-USDT", usdt("25100.40")), LiquidationSettled)
    assert [(s.account, s.quantity, s.price, s.fund_delta) for s in settled] == [
        (1, 20, usdt("25100.40"), 2_008_000)
    ]
    assert d.pos("BTC-USDT", 1) is None
    d.check()


def test_binance_lp_matches_domain_formula_and_flips_exactly() -> None:
    # DOMAIN.md §2 LP = (M + cum - |q|E) / (|q|MMR - |q|) for the Binance LP example.
    spec = btc_usdt_spec()
    pos = make_pos(spec, 20, usdt("50000"), 500 * U)
    q, e, mmr = Fraction(2, 100), 50_000, Fraction(4, 1_000)
    exact = (500 + 0 - q * e) / (q * mmr - q)  # 25,100.4016...
    assert Fraction(2_510_040, 100) < exact < Fraction(2_510_041, 100)
    t = liquidation_threshold(spec, pos)
    assert t == usdt("25100.40")
    assert is_liquidatable(spec, pos, t)
    assert not is_liquidatable(spec, pos, t + 1)


def test_coin_m_maintenance_margin() -> None:
    # DOMAIN.md §3 "COIN-M MM": 100 contracts x 100 USD at 25,000 = 0.4 BTC, MMR 0.4 %
    # -> MM 0.0016 BTC.
    spec = btc_usd_spec(tiers=TierTable([(0, 125, 4_000)]))
    pos = make_pos(spec, 100, 250_000, 0)
    assert notional(spec, pos, 250_000) == 40_000_000  # 0.4 BTC
    assert maintenance_margin(spec, pos, 250_000) == 160_000  # 0.0016 BTC
    assert initial_margin(spec, pos, 250_000) == 320_000  # 0.4 / 125

    # Same through the engine's view.
    d = Desk(spec)
    d.open("BTC-USD", 1, 2, 250_000, 100, long_margin=BTC // 10, short_margin=BTC // 10)
    d.mark("BTC-USD", 250_000)
    v = d.markets["BTC-USD"].view(1)
    assert (v.maintenance_margin, v.initial_margin, v.entry_price) == (160_000, 320_000, 250_000)


def test_bybit_isolated_long_lp() -> None:
    # DOMAIN.md §3 "Bybit isolated": long 1 BTC @ 10,000, 50x (IMR 2 %), MMR 0.5 %, margin = IM.
    # Bybit's LP = E(1 - IMR + MMR) = 9,850 values MM at the *entry* notional.  riskd follows
    # DOMAIN.md §2 (MM at the mark notional, the Binance form), so its exact threshold is
    # (M - |q|E)/(|q|MMR - |q|) = 9,800/0.995 = 9,849.246... -> 9,849.24 (long: P <= threshold).
    spec = btc_usdt_spec(tiers=TierTable([(0, 50, 5_000)]))
    pos = make_pos(spec, 1_000, usdt("10000"), 0)
    pos.margin = initial_margin(spec, pos, usdt("10000"))
    assert pos.margin == 200 * U  # IM = 2 % of 10,000
    assert liquidation_threshold(spec, pos) == usdt("9849.24")
    assert is_liquidatable(spec, pos, usdt("9849.20"))  # highest tick at or below
    assert not is_liquidatable(spec, pos, usdt("9849.30"))
    # At Bybit's 9,850: B = 50 USDT > MM(mark) = 49.25 USDT.
    assert margin_balance(spec, pos, usdt("9850")) == 50 * U
    assert maintenance_margin(spec, pos, usdt("9850")) == 49_250_000
    assert not is_liquidatable(spec, pos, usdt("9850"))


def test_bybit_isolated_short_lp() -> None:
    # DOMAIN.md §3 "Bybit isolated": short 1 BTC @ 8,000, 40x (IMR 2.5 %), MMR 0.5 %.
    # Bybit (MM on entry value): 8,160.  riskd (MM on mark value):
    # (M + |q|E)/(|q| + |q|MMR) = 8,200/1.005 = 8,159.203... -> 8,159.21 (short: P >= threshold).
    spec = btc_usdt_spec(tiers=TierTable([(0, 40, 5_000)]))
    pos = make_pos(spec, -1_000, usdt("8000"), 0)
    pos.margin = initial_margin(spec, pos, usdt("8000"))
    assert pos.margin == 200 * U
    assert liquidation_threshold(spec, pos) == usdt("8159.21")
    assert is_liquidatable(spec, pos, usdt("8159.21"))
    assert not is_liquidatable(spec, pos, usdt("8159.20"))
    assert is_liquidatable(spec, pos, usdt("8160"))


def test_bybit_inverse_bankruptcy_execution_price() -> None:
    # DOMAIN.md §3 "Bybit inverse bankruptcy": long 5,000 contracts BTCUSD (1 USD each)
    # @ 7,890.08, 50x -> BP = E*L/(L+1) = 7,735.3725... -> 7,735.50 on a 0.5 tick.
    spec = MarketSpec(
        "BTCUSD",
        ContractType.INVERSE,
        BTC_ASSET,
        price_decimals=2,
        tick_size=50,
        quantity_decimals=0,
        step_size=1,
        tiers=TierTable([(0, 50, 5_000)]),
        contract_value=1,
    )
    # 7,890.08 is off the 0.5 tick: build the position directly from the trade value.
    pos = make_pos(spec, 5_000, 789_008, 0)
    assert pos.basis == -63_370_714  # -5,000 USD / 7,890.08 = -0.63370714 BTC (rounded down)
    pos.margin = initial_margin(spec, pos, 789_008)
    assert pos.margin == 1_267_415  # ceil(0.63370714 / 50)
    assert bankruptcy_threshold(spec, pos) == 773_537  # 7,735.37 (exact 7,735.3725...)
    price = execution_price(spec, pos)
    assert price == 773_550  # 7,735.50
    assert close_result(spec, pos, price)[1] >= 0
    assert close_result(spec, pos, price - 50)[1] < 0  # 7,735.00 would leave a shortfall


def test_dydx_isolated_short_lp() -> None:
    # DOMAIN.md §3 "dYdX isolated LP": collateral 1,000, short 3 @ 3,000, MMF 5 %
    # -> LP = (1,000 + 9,000)/3.15 = 3,174.603... A short is liquidatable iff P >= threshold,
    # so the exact threshold rounds *up* to 3,174.61 (at 3,174.60 B is still above MM).
    spec = MarketSpec(
        "ETH-USD",
        ContractType.LINEAR,
        USDT_ASSET,
        price_decimals=2,
        tick_size=1,
        quantity_decimals=3,
        step_size=1,
        tiers=TierTable([(0, 19, 50_000)]),  # IM (1/19) must exceed the 5 % MMR
    )
    pos = make_pos(spec, -3_000, 300_000, 1_000 * U)
    assert liquidation_threshold(spec, pos) == 317_461
    assert not is_liquidatable(spec, pos, 317_460)
    assert is_liquidatable(spec, pos, 317_461)
    # At 3,174.60: B = 10,000 - 9,523.80 = 476.20 > MM = 476.19.
    assert margin_balance(spec, pos, 317_460) == 476_200_000
    assert maintenance_margin(spec, pos, 317_460) == 476_190_000
    assert bankruptcy_threshold(spec, pos) == 333_334  # 3,333.33..., rounded up for a short

    d = Desk(spec)
    d.open("ETH-USD", 2, 1, 300_000, 3_000, long_margin=5_000 * U, short_margin=1_000 * U)
    d.mark("ETH-USD", 300_000)
    assert d.markets["ETH-USD"].view(1).liquidation_price == 317_461
    assert of_type(d.mark("ETH-USD", 317_460), LiquidationSettled) == []
    assert d.pos("ETH-USD", 1).size == -3_000
    assert [s.account for s in of_type(d.mark("ETH-USD", 317_461), LiquidationSettled)] == [1]


@pytest.mark.parametrize(
    ("cap_ppm", "fee"),
    [(5_000, 28_050_000), (25_000, 140_250_000), (1_000_000, 510 * U), (0, 0)],
)
def test_fund_delta_with_fee_cap(cap_ppm: int, fee: int) -> None:
    # DOMAIN.md §3 "Fund delta with a fee cap": 0.1 BTC long, bankruptcy quote 5,100, sold at
    # 56,100 -> surplus 510; fund +28.05 at a 0.5 % cap, +140.25 at 2.5 %, +510 at 100 %.
    spec = btc_usdt_spec(liquidation_fee_cap_ppm=cap_ppm)
    # An isolated long whose bankruptcy price is 51,000: 0.1 @ 60,000 with 900 margin.
    pos = make_pos(spec, 100, usdt("60000"), 900 * U)
    assert bankruptcy_threshold(spec, pos) == usdt("51000")
    value, remaining = close_result(spec, pos, usdt("56100"))
    assert (value, remaining) == (-5_610 * U, 510 * U)  # selling 0.1 at 56,100 brings 5,610
    assert liquidation_fee(spec, remaining, -value) == fee


def test_liquidation_fee_never_takes_a_deficit() -> None:
    spec = btc_usdt_spec()
    assert liquidation_fee(spec, 0, 1_000 * U) == 0
    assert liquidation_fee(spec, -5 * U, 1_000 * U) == 0
    # The cap rounds up: 0.5 % of 1 quantum is one quantum.
    capped = btc_usdt_spec(liquidation_fee_cap_ppm=5_000)
    assert liquidation_fee(capped, 10, 1) == 1
    assert liquidation_fee(capped, 10, 201) == 2


# --- view ---------------------------------------------------------------------


def test_view_of_a_short_and_unknown_account() -> None:
    d = Desk(btc_usdt_spec())
    d.open("BTC-USDT", 1, 2, usdt("50000"), 20, long_margin=500 * U, short_margin=500 * U)
    m = d.markets["BTC-USDT"]
    v = m.view(2)
    # Before any mark: prices known, mark-dependent fields zero.
    assert (v.size, v.entry_price, v.bankruptcy_price) == (-20, usdt("50000"), usdt("75000"))
    assert (v.unrealised, v.maintenance_margin, v.initial_margin, v.adl_quintile) == (0, 0, 0, 0)
    d.mark("BTC-USDT", usdt("55000"))
    v = m.view(2)
    assert v.unrealised == -100 * U
    assert v.margin_balance == 400 * U
    # short LP: (500 + 1,000)/(0.02 * 1.004) = 74,701.19... -> 74,701.20
    assert v.liquidation_price == usdt("74701.20")
    assert m.view(3) is None


# --- exactness of thresholds (property tests) ------------------------------------

LINEAR = btc_usdt_spec()
INVERSE = btc_usd_spec()


def oracle_liquidatable(spec: MarketSpec, pos: Position, price: int) -> bool:
    """B <= MM from DOMAIN.md §2, in exact rationals, independent of riskd.core.margin."""
    if spec.contract_type is ContractType.LINEAR:
        value = Fraction(
            pos.size
            * price
            * 10 ** (spec.asset.decimals - spec.price_decimals - spec.quantity_decimals)
        )
    else:
        value = Fraction(
            -pos.size * spec.contract_value * 10**spec.price_decimals * spec.asset.scale,
            price * 10**spec.quantity_decimals,
        )
    balance = pos.margin + value - pos.basis
    n = abs(value)
    tier = spec.tiers.tier_for(int(n))  # brackets are half-open on integer notionals
    mm = max(n * t.mmr_ppm - Fraction(t.cum_scaled) for t in spec.tiers) / 10**6
    assert mm >= n * tier.mmr_ppm / 10**6 - Fraction(tier.cum_scaled, 10**6) - 1
    return balance <= mm


positions = st.tuples(
    st.sampled_from([LINEAR, INVERSE]),
    st.integers(min_value=1, max_value=10**6),  # |size|
    st.booleans(),  # long?
    st.integers(min_value=100, max_value=200_000),  # entry, in ticks
    st.integers(min_value=0, max_value=10**13),  # margin
)


@settings(max_examples=300, deadline=None)
@given(positions, st.integers(min_value=1, max_value=400_000))
def test_is_liquidatable_matches_oracle(
    p: tuple[MarketSpec, int, bool, int, int], ticks: int
) -> None:
    spec, size, long, entry, margin = p
    pos = make_pos(spec, size if long else -size, entry * spec.tick_size, margin)
    price = ticks * spec.tick_size
    assert is_liquidatable(spec, pos, price) == oracle_liquidatable(spec, pos, price)


@settings(max_examples=300, deadline=None)
@given(positions)
def test_liquidation_threshold_is_where_the_predicate_flips(
    p: tuple[MarketSpec, int, bool, int, int],
) -> None:
    spec, size, long, entry, margin = p
    pos = make_pos(spec, size if long else -size, entry * spec.tick_size, margin)
    t = liquidation_threshold(spec, pos)
    if long:
        if NEVER_LONG < t < INT64_MAX:
            assert is_liquidatable(spec, pos, t)
            assert oracle_liquidatable(spec, pos, t)
        if t < INT64_MAX:
            assert not is_liquidatable(spec, pos, t + 1)
            assert not oracle_liquidatable(spec, pos, t + 1)
    else:
        assert 1 <= t <= NEVER_SHORT
        if t < NEVER_SHORT:
            assert is_liquidatable(spec, pos, t)
            assert oracle_liquidatable(spec, pos, t)
        if t > 1:
            assert not is_liquidatable(spec, pos, t - 1)
            assert not oracle_liquidatable(spec, pos, t - 1)


@st.composite
def tier_tables(draw: st.DrawFn) -> TierTable:
    """1..6 brackets, any floors and non-decreasing MMRs the table accepts."""
    rows, floor, mmr, lev = [], 0, draw(st.integers(1, 50_000)), 10**6
    for i in range(draw(st.integers(1, 6))):
        if i:
            floor += draw(st.integers(1, 10**14))
            mmr = min(mmr + draw(st.sampled_from([0, 1, 500, 5_000, 100_000])), 400_000)
        lev = max(min(lev, (10**6 - 1) // mmr, draw(st.integers(1, 200))), 1)
        rows.append((floor, lev, mmr))
    return TierTable(rows)


@settings(max_examples=400, deadline=None)
@given(tier_tables(), positions, st.integers(min_value=-(10**13), max_value=10**13))
def test_liquidation_threshold_stops_at_the_binding_tier_and_misses_none(
    tiers: TierTable, p: tuple[MarketSpec, int, bool, int, int], extra: int
) -> None:
    """The per-tier loop stops past the extreme (issue 17); its answer must be
    the extreme over every tier's closed form (``_threshold``), for any table."""
    spec, size, long, entry, margin = p
    spec = dataclasses.replace(spec, tiers=tiers)
    pos = make_pos(spec, size if long else -size, entry * spec.tick_size, max(margin + extra, 0))
    each = [
        _threshold(spec, pos.size, pos.margin - pos.basis, t.mmr_ppm, t.cum_scaled) for t in tiers
    ]
    assert liquidation_threshold(spec, pos) == (max(each) if long else min(each))


@settings(max_examples=300, deadline=None)
@given(positions)
def test_bankruptcy_threshold_and_execution_price(
    p: tuple[MarketSpec, int, bool, int, int],
) -> None:
    spec, size, long, entry, margin = p
    pos = make_pos(spec, size if long else -size, entry * spec.tick_size, margin)
    t = bankruptcy_threshold(spec, pos)
    if long and NEVER_LONG < t < INT64_MAX:
        assert is_bankrupt(spec, pos, t) and not is_bankrupt(spec, pos, t + 1)
    if not long and 1 < t < NEVER_SHORT:
        assert is_bankrupt(spec, pos, t) and not is_bankrupt(spec, pos, t - 1)
    # The execution price is on the tick, leaves R >= 0, and is the worst such tick.
    tick = spec.tick_size
    price = execution_price(spec, pos)
    assert price % tick == 0 and tick <= price <= INT64_MAX
    assert close_result(spec, pos, price)[1] >= 0
    worse = price - tick if long else price + tick
    if tick <= worse <= INT64_MAX:
        # One tick worse closing leaves a shortfall (after the rounding riskd
        # applies, which in inverse markets can put the worst tick past the
        # exact threshold: see test_execution_price_is_the_worst_tick).
        assert close_result(spec, pos, worse)[1] < 0


@settings(max_examples=300, deadline=None)
@given(positions, st.integers(min_value=1, max_value=400_000), st.booleans())
def test_the_fill_sanity_check_refuses_exactly_a_side_liquidatable_at_the_mark(
    p: tuple[MarketSpec, int, bool, int, int], ticks: int, backstop: bool
) -> None:
    """Rule 3 compares the mark with the threshold the fill indexes the side at
    (issue 17): that must be the predicate itself, ``B <= MM`` (the backstop:
    ``B <= 0``) at the mark, on both sides of every threshold."""
    spec, size, long, entry, margin = p
    spec = dataclasses.replace(spec, fill_price_band_ppm=50_000)
    pos = make_pos(spec, size if long else -size, entry * spec.tick_size, margin)
    account = BACKSTOP_ACCOUNT if backstop else 1
    threshold = LiquidationMachine.threshold_for(spec, account, pos.size, pos.basis, pos.margin)
    pos.account = account
    assert threshold == LiquidationMachine.threshold_of(spec, pos)
    for mark in {ticks * spec.tick_size, threshold - 1, threshold, threshold + 1}:
        if not 1 <= mark <= INT64_MAX:
            continue
        crossed = is_bankrupt(spec, pos, mark) if backstop else is_liquidatable(spec, pos, mark)
        refused = False
        try:
            check_side(spec, mark, account, pos.size, threshold, "buyer_account")
        except Rejected as r:
            assert r.field == "buyer_account"
            refused = True
        assert refused == crossed, (mark, threshold)


def test_execution_price_is_the_worst_tick() -> None:
    # liquidation.execution_price promises "the worst tick price at which closing the whole
    # position leaves margin >= 0".  Inverse short of 1 contract @ 53,514.0 with 0 margin:
    # exact bankruptcy threshold 53,514.3 -> rounded down to 53,514.0; but closing at
    # 53,514.5 also leaves R == 0 (both trade values round down), so 53,514.5 is the worst.
    spec = btc_usd_spec()
    pos = make_pos(spec, -1, 535_140, 0)
    assert bankruptcy_threshold(spec, pos) == 535_143
    assert close_result(spec, pos, 535_145)[1] == 0
    assert execution_price(spec, pos) == 535_145


@settings(max_examples=200, deadline=None)
@given(positions, st.integers(min_value=1, max_value=400_000))
def test_unrealised_rounds_down_and_is_exact_to_a_quantum(
    p: tuple[MarketSpec, int, bool, int, int], ticks: int
) -> None:
    spec, size, long, entry, margin = p
    pos = make_pos(spec, size if long else -size, entry * spec.tick_size, margin)
    price = ticks * spec.tick_size
    num, den = spec.value(pos.size, price)
    exact = Fraction(num, den) - pos.basis
    u = unrealised(spec, pos, price)
    assert u <= exact < u + 1
    assume(spec.is_linear)
    assert u == exact  # linear values are exact


# --- margin calls ---------------------------------------------------------------------


def test_margin_call_once_per_entry_into_the_band() -> None:
    # Binance LP example (LP 25,100.40); default band 2 %: a long is called once the mark
    # is <= LP x 1.02 = 25,602.40.
    from riskd.core.events import MarginCall

    d = Desk(btc_usdt_spec())
    d.open("BTC-USDT", 1, 2, usdt("50000"), 20, 500 * U, 5_000 * U)
    d.mark("BTC-USDT", usdt("50000"))
    assert of_type(d.mark("BTC-USDT", usdt("25610")), MarginCall) == []
    calls = of_type(d.mark("BTC-USDT", usdt("25600")), MarginCall)
    # B = 500 - 488 = 12; MM = 512 x 0.4 % = 2.048.
    assert calls == [
        MarginCall(
            market="BTC-USDT",
            account=1,
            margin_balance=12 * U,
            maintenance_margin=2_048_000,
            liquidation_price=usdt("25100.40"),
            ts=0,
        )
    ]
    assert of_type(d.mark("BTC-USDT", usdt("25500")), MarginCall) == []  # already called
    d.mark("BTC-USDT", usdt("30000"))  # leaves the band ...
    assert len(of_type(d.mark("BTC-USDT", usdt("25600")), MarginCall)) == 1  # ... and re-enters


def test_margin_calls_can_be_disabled() -> None:
    from riskd.core.events import MarginCall

    d = Desk(btc_usdt_spec(margin_call_ppm=0))
    d.open("BTC-USDT", 1, 2, usdt("50000"), 20, 500 * U, 5_000 * U)
    d.mark("BTC-USDT", usdt("50000"))
    assert of_type(d.mark("BTC-USDT", usdt("25200")), MarginCall) == []
