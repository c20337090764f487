"""Risk tiers: derived cum offsets, MM continuity, bracket lookup, validation."""

from __future__ import annotations

import pytest
from _kit import BTCUSDT_BRACKETS, U, btc_usdt_spec
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.core import Position, TierTable
from riskd.core.margin import maintenance_margin

BTCUSDT = TierTable(BTCUSDT_BRACKETS)


def test_btcusdt_cum_values() -> None:
    # DOMAIN.md §3 "Tiers": cum 0, 50, 1,300, 16,300, 266,300 USDT.
    assert [t.cum for t in BTCUSDT] == [0, 50 * U, 1_300 * U, 16_300 * U, 266_300 * U]
    # cum is kept exact, scaled by 1e6.
    cums = (0, 50, 1_300, 16_300, 266_300)
    assert [t.cum_scaled for t in BTCUSDT] == [c * U * 10**6 for c in cums]
    assert BTCUSDT.as_rows() == BTCUSDT_BRACKETS
    assert len(BTCUSDT) == 5


def test_btcusdt_264k_notional_mm_1340() -> None:
    # DOMAIN.md §3 "Tiers": 264,000 notional -> MMR 1 %, cum 1,300 -> MM 1,340.
    tier = BTCUSDT.tier_for(264_000 * U)
    assert (tier.mmr_ppm, tier.cum, tier.max_leverage) == (10_000, 1_300 * U, 50)
    assert BTCUSDT.maintenance(264_000 * U) == 1_340 * U
    assert BTCUSDT.maintenance_scaled(264_000 * U) == 1_340 * U * 10**6
    assert BTCUSDT.initial(264_000 * U) == 5_280 * U  # 264,000 / 50x


@pytest.mark.parametrize(
    ("notional", "floor"),
    [
        (0, 0),
        (50_000 * U - 1, 0),
        (50_000 * U, 50_000 * U),
        (249_999 * U, 50_000 * U),
        (250_000 * U, 250_000 * U),
        (10_000_000 * U - 1, 1_000_000 * U),
        (10_000_000 * U, 10_000_000 * U),
        (10**18, 10_000_000 * U),
    ],
)
def test_tier_for_brackets_are_half_open(notional: int, floor: int) -> None:
    assert BTCUSDT.tier_for(notional).floor == floor


@pytest.mark.parametrize("n", range(1, len(BTCUSDT_BRACKETS)))
def test_mm_continuous_at_every_floor(n: int) -> None:
    below, at = BTCUSDT.tiers[n - 1], BTCUSDT.tiers[n]
    floor = at.floor
    # The previous bracket's formula and the new one agree exactly at the floor.
    assert floor * below.mmr_ppm - below.cum_scaled == floor * at.mmr_ppm - at.cum_scaled
    assert BTCUSDT.maintenance_scaled(floor) == floor * below.mmr_ppm - below.cum_scaled
    # One quantum below the floor MM falls by exactly the lower bracket's MMR.
    assert BTCUSDT.maintenance_scaled(floor) - BTCUSDT.maintenance_scaled(floor - 1) == (
        below.mmr_ppm
    )
    assert BTCUSDT.maintenance_scaled(floor + 1) - BTCUSDT.maintenance_scaled(floor) == at.mmr_ppm


def test_mm_rounds_up_to_the_quantum() -> None:
    # 1 quantum of notional at 0.4 % -> 0.004 quantum of MM, rounded up to 1.
    assert BTCUSDT.maintenance(1) == 1
    assert BTCUSDT.maintenance(250) == 1
    assert BTCUSDT.maintenance(251) == 2
    assert BTCUSDT.maintenance(0) == 0
    assert BTCUSDT.initial(126) == 2  # ceil(126 / 125)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10**15))
def test_tier_formula_is_the_max_over_tiers(n: int) -> None:
    # MM is convex: the bracket formula equals max_t (N*MMR_t - cum_t).
    assert BTCUSDT.maintenance_scaled(n) == max(n * t.mmr_ppm - t.cum_scaled for t in BTCUSDT)


@settings(max_examples=100, deadline=None)
@given(
    qty=st.integers(min_value=1, max_value=10**6),
    price=st.integers(min_value=1, max_value=10**6).map(lambda p: p * 10),
)
def test_margin_module_agrees_with_table(qty: int, price: int) -> None:
    spec = btc_usdt_spec()
    pos = Position(1)
    pos.trade(qty, spec.trade_value(qty, price))
    notional = qty * price * 10  # quantums: 0.001 BTC x 0.01 USDT = 1e-5 USDT = 10 quantums
    assert maintenance_margin(spec, pos, price) == BTCUSDT.maintenance(notional)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "at least one tier"),
        ([(1, 100, 5_000)], "first tier"),
        ([(0, 100, 5_000), (0, 50, 10_000)], "floors must increase"),
        ([(0, 100, 5_000), (10, 50, 10_000), (5, 20, 20_000)], "floors must increase"),
        ([(0, 100, 0)], "maintenance_margin_rate_ppm"),
        ([(0, 100, 1_000_000)], "maintenance_margin_rate_ppm"),
        ([(0, 100, -1)], "maintenance_margin_rate_ppm"),
        ([(0, 0, 5_000)], "max_leverage"),
        ([(0, 2_000_000, 1)], "max_leverage"),
        # 1000x with 50 % maintenance margin: opened at max leverage, already far below MM.
        ([(0, 1_000, 500_000)], r"tiers\[0\]: max leverage 1000x"),
        # Initial margin equal to maintenance margin: liquidatable at the first adverse tick.
        ([(0, 20, 50_000)], "below the initial margin"),
        ([(0, 100, 5_000), (2**63, 50, 10_000)], r"tiers\[1\]: notional_floor .* int64"),
        ([(0, 100, 5_000), (10, 50, 4_000)], "MMR must not fall"),
        ([(0, 50, 5_000), (10, 100, 10_000)], "MMR must not fall"),
    ],
)
def test_invalid_tables_rejected(rows: list[tuple[int, int, int]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TierTable(rows)


def test_equal_mmr_and_leverage_across_brackets_allowed() -> None:
    t = TierTable([(0, 20, 10_000), (100, 20, 10_000)])
    assert [x.cum_scaled for x in t] == [0, 0]
    assert t.maintenance(1_000) == 10
