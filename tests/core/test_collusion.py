"""Two colluding accounts cannot pay themselves from the insurance fund (issue 11, item 2).

The attack: at mark 50,000 an account with 1,000 USDT margin "sells" 1 BTC at
40,000 to its accomplice; it is bankrupt at once, the fund pays the
shortfall, the accomplice closes at the mark and withdraws.  With
``fill_price_band_ppm`` (riskd.core.fill_sanity) every step of it is refused.

The property, precisely: a pair of accounts trades only with each other and
with the fund's backstop, at prices the gateway chooses, while the mark moves
by at most half the smallest maintenance rate per input, and funding at any
rate, with takeovers, the backstop's own bankruptcy and ADL as they come.  Measure each account's
equity exactly at the mark (wallet + isolated margin + unrealised PnL, as a
fraction).  The only way the pair may gain against the fund is the market
risk the fund took by taking a position over: the backstop's inventory moving
with the mark (the pair holds the other side of it).  So at every input

    Δ(pair equity) + (mark-to-market change of the backstop's inventory) <= 0

and (with the default liquidation settings) the fund never pays a shortfall.
The same property holds under partial liquidation, takeover at the bankruptcy
price and a low fee cap, where a shortfall can occur.
"""

from __future__ import annotations

import contextlib
import dataclasses
from fractions import Fraction
from typing import Any

import pytest
from _kit import BTC, Desk, U, assert_rejected, btc_usd_spec, btc_usdt_spec, of_type, usdt
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.core import (
    BACKSTOP_ACCOUNT,
    Code,
    Deposit,
    Fill,
    FundingRate,
    FundKind,
    LiquidationSettled,
    MarginTransfer,
    MarkPrice,
    Rejected,
    digest,
    violations,
)
from riskd.core.market import MarketSpec, PartialLiquidation, TakeoverPrice

BAND = 50_000  # 5 %
M = "BTC-USDT"
A, B = 1, 2


def banded(spec: MarketSpec, band: int = BAND) -> MarketSpec:
    return dataclasses.replace(spec, fill_price_band_ppm=band)


def attack_desk() -> Desk:
    d = Desk(banded(btc_usdt_spec()))
    d.inject("USDT", 100_000 * U)
    d.margin(A, M, 1_000 * U)
    d.margin(B, M, 100_000 * U)
    return d


# --- the rules, one at a time --------------------------------------------------


def test_no_fill_before_the_first_mark() -> None:
    d = attack_desk()
    r = assert_rejected(
        d.engine, Fill(M, 1, B, A, usdt("50000"), 1_000), Code.FAILED_PRECONDITION, "price"
    )
    assert "no mark price yet" in r.message and "50000" in r.message
    # With the band off (0) the gateway is trusted, as before.
    off = Desk(btc_usdt_spec())
    off.margin(A, M, 1_000 * U)
    off.margin(B, M, 1_000 * U)
    off.fill(M, B, A, usdt("50000"), 10)


def test_the_issue_attack_is_refused_on_price_and_the_fund_keeps_everything() -> None:
    d = attack_desk()
    d.mark(M, usdt("50000"))
    # "Sells" 1 BTC at 40,000 (20 % below the mark).
    r = assert_rejected(
        d.engine, Fill(M, 1, B, A, usdt("40000"), 1_000), Code.FAILED_PRECONDITION, "price"
    )
    assert "50000 ppm" in r.message and str(usdt("50000")) in r.message
    assert f"{usdt('47500')}..{usdt('52500')}" in r.message  # the allowed range, in price units
    assert d.fund("USDT") == 100_000 * U


def test_within_the_band_but_bankrupt_at_the_mark_is_refused_on_the_account() -> None:
    d = attack_desk()
    d.mark(M, usdt("50000"))
    # 47,500 is inside the band, but 1,000 USDT cannot carry a 2,500 loss at the mark.
    r = assert_rejected(
        d.engine, Fill(M, 1, B, A, usdt("47500"), 1_000), Code.FAILED_PRECONDITION, "seller_account"
    )
    assert "maintenance margin" in r.message
    # Same for the buyer's side: A buys 0.1 BTC at 52,500 with 1,000 of margin (loss 250 +
    # MM 20 at the mark is fine), but 0.4 BTC (loss 1,000) is not.
    d.fill(M, A, B, usdt("52500"), 100)
    assert_rejected(
        d.engine, Fill(M, 9, A, B, usdt("52500"), 300), Code.FAILED_PRECONDITION, "buyer_account"
    )
    d.check()


def test_band_edges_are_inclusive() -> None:
    d = attack_desk()
    d.mark(M, usdt("50000"))
    d.fill(M, B, A, usdt("47500"), 10)  # exactly -5 %
    d.fill(M, A, B, usdt("52500"), 10)  # exactly +5 %
    assert_rejected(
        d.engine, Fill(M, 7, B, A, usdt("47499.90"), 10), Code.FAILED_PRECONDITION, "price"
    )
    assert_rejected(
        d.engine, Fill(M, 8, A, B, usdt("52500.10"), 10), Code.FAILED_PRECONDITION, "price"
    )
    d.check()


def test_the_backstop_trades_only_at_the_mark_or_better_for_the_fund() -> None:
    d = attack_desk()
    d.mark(M, usdt("50000"))
    d.fill(M, A, B, usdt("50000"), 1_000)  # A long 1 BTC on 1,000 margin (50x)
    out = d.mark(M, usdt("49150"))  # A crosses (LP 49,196.7): taken over by the backstop
    assert [s.account for s in of_type(out, LiquidationSettled)] == [A]
    backstop = d.pos(M, BACKSTOP_ACCOUNT)
    assert backstop.size == 1_000
    # B buys the fund's inventory below the mark: refused; at the mark: fine.
    r = assert_rejected(
        d.engine,
        Fill(M, 20, B, BACKSTOP_ACCOUNT, usdt("49100"), 500),
        Code.FAILED_PRECONDITION,
        "price",
    )
    assert "backstop" in r.message
    d.fill(M, B, BACKSTOP_ACCOUNT, usdt("49150"), 500)
    d.fill(M, B, BACKSTOP_ACCOUNT, usdt("49200"), 500)
    assert d.pos(M, BACKSTOP_ACCOUNT) is None
    d.check()


# --- the property ------------------------------------------------------------


def equity(d: Desk, market: str, account: int, price: int) -> Fraction:
    m = d.markets[market]
    total = Fraction(d.wallet(m.asset, account)) if account != BACKSTOP_ACCOUNT else Fraction(0)
    pos = m.positions.get(account)
    if pos is not None:
        num, den = m.spec.value(pos.size, price)
        total += pos.margin + Fraction(num, den) - pos.basis
    return total


def inventory_move(d: Desk, market: str, new_mark: int) -> Fraction:
    """What the backstop's current position gains if the mark moves to ``new_mark``."""
    m = d.markets[market]
    pos = m.positions.get(BACKSTOP_ACCOUNT)
    if pos is None or not pos.size or m.mark is None:
        return Fraction(0)
    new, old = m.spec.value(pos.size, new_mark), m.spec.value(pos.size, m.mark)
    return Fraction(*new) - Fraction(*old)


LINEAR = banded(btc_usdt_spec())
INVERSE = banded(btc_usd_spec())

#: (spec, first mark, fund, wallet per account, margin unit, quantity range)
SETUPS: dict[str, tuple[MarketSpec, int, int, int, int, int]] = {
    "linear": (LINEAR, usdt("50000"), 1_000_000 * U, 1_000_000 * U, 2 * U, 2_000),
    "inverse": (INVERSE, 500_000, 100 * BTC, 100 * BTC, 4_000, 2_000),
}

#: Half the smallest maintenance rate of both test markets (0.4 %, 0.5 %).
MARK_STEP_PPM = 2_000

#: Fill prices as ppm off the mark: at it, near it, anywhere in (and just beyond) the band.
offsets = st.one_of(
    st.just(0), st.integers(-2_000, 2_000), st.integers(-BAND - 2_000, BAND + 2_000)
)

marks = st.builds(
    lambda sign, size, n: ("marks", sign * size, n),
    st.sampled_from([-1, 1]),
    st.integers(0, MARK_STEP_PPM),
    st.integers(1, 25),
)
backstop = st.tuples(st.just("backstop"), st.sampled_from([A, B]), offsets, st.integers(1, 2_000))

actions = st.lists(
    st.one_of(
        st.tuples(st.just("margin"), st.sampled_from([A, B]), st.integers(1, 500)),
        st.tuples(st.just("unmargin"), st.sampled_from([A, B]), st.integers(1, 500)),
        st.tuples(st.just("fill"), st.sampled_from([A, B]), offsets, st.integers(1, 2_000)),
        # Any funding rate the gateway cares to report.
        st.tuples(st.just("funding"), st.integers(-(10**8) + 1, 10**8 - 1)),
        # Runs of mark steps in one direction (liquidations happen on these), and
        # trades with the backstop's inventory, more often than the rest.
        marks,
        marks,
        backstop,
        backstop,
    ),
    min_size=10,
    max_size=30,
)


def to_tick(spec: MarketSpec, price: int) -> int:
    return max(spec.tick_size, price - price % spec.tick_size)


def step(d: Desk, spec: MarketSpec, unit: int, action: tuple[Any, ...], n: int) -> None:
    mark = d.markets[spec.symbol].mark
    assert mark is not None
    sym = spec.symbol
    match action:
        case ("margin", who, k):
            d.apply(MarginTransfer(who, sym, k * unit))
        case ("unmargin", who, k):
            d.apply(MarginTransfer(who, sym, -k * unit))
        case ("fill", buyer, off, qty):
            seller = B if buyer == A else A
            price = to_tick(spec, mark * (1_000_000 + off) // 1_000_000)
            d.apply(Fill(sym, n, buyer, seller, price, qty))
        case ("backstop", who, off, qty):
            held = d.markets[sym].positions.get(BACKSTOP_ACCOUNT)
            if held is None or not held.size:
                return
            qty = min(qty, abs(held.size))
            price = to_tick(spec, mark * (1_000_000 + off) // 1_000_000)
            buyer, seller = (who, BACKSTOP_ACCOUNT) if held.size > 0 else (BACKSTOP_ACCOUNT, who)
            d.apply(Fill(sym, n, buyer, seller, price, qty))
        case ("funding", rate):
            d.apply(FundingRate(sym, rate))
        case ("mark", s):
            price = to_tick(spec, mark * (1_000_000 + s) // 1_000_000)
            d.apply(MarkPrice(sym, price))


draws = {
    "plan": actions,
    "margins": st.tuples(st.integers(1, 400), st.integers(1, 400)),
    "opening": st.integers(1, 2_000),
}


@pytest.mark.parametrize("setup", sorted(SETUPS))
@settings(max_examples=200, deadline=None)
@given(**draws)
def test_a_colluding_pair_gains_nothing_from_the_fund(
    setup: str, plan: list[tuple[Any, ...]], margins: tuple[int, int], opening: int
) -> None:
    play(setup, SETUPS[setup][0], plan, margins, opening)
    # With the default settings (whole takeover at the mark) the fund does not even
    # pay a shortfall; under the variants below it may, but the pair gains nothing.


#: The liquidation settings that change what a takeover does.
VARIANTS: dict[str, dict[str, Any]] = {
    "takeover at the bankruptcy price": {"takeover_price": TakeoverPrice.BANKRUPTCY},
    "tier step": {
        "partial_liquidation_policy": PartialLiquidation.TIER_STEP,
        "liquidation_fee_cap_ppm": 10_000,
    },
    "fraction": {
        "partial_liquidation_policy": PartialLiquidation.FRACTION,
        "liquidation_fee_cap_ppm": 10_000,
        "partial_cooldown_ms": 0,
    },
    "fee cap 0.5 %": {"liquidation_fee_cap_ppm": 5_000},
}


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@settings(max_examples=40, deadline=None)
@given(**draws)
def test_nor_under_other_liquidation_settings(
    setup: str,
    variant: str,
    plan: list[tuple[Any, ...]],
    margins: tuple[int, int],
    opening: int,
) -> None:
    spec = dataclasses.replace(SETUPS[setup][0], **VARIANTS[variant])
    play(setup, spec, plan, margins, opening, shortfalls=True)


def play(
    setup: str,
    spec: MarketSpec,
    plan: list[tuple[Any, ...]],
    margins: tuple[int, int],
    opening: int,
    shortfalls: bool = False,
) -> None:
    """Run ``plan``; after each input the pair has gained nothing but inventory moves."""
    _, first, fund, wallet, unit, _ = SETUPS[setup]
    sym, asset = spec.symbol, spec.asset.symbol
    d = Desk(spec)
    d.inject(asset, fund)
    for who, k in zip((A, B), margins, strict=True):
        d.apply(Deposit(who, asset, wallet))
        d.apply(MarginTransfer(who, sym, k * unit))
    d.mark(sym, first)
    with contextlib.suppress(Rejected):  # a position to start from, if the margins carry it
        d.apply(Fill(sym, 0, A, B, first, opening))
    # A run of marks is one input per step: the property holds after each.
    inputs = [x for a in plan for x in ([("mark", a[1])] * a[2] if a[0] == "marks" else [a])]
    for n, action in enumerate(inputs, start=1):
        m = d.markets[sym]
        mark = m.mark
        assert mark is not None
        before = digest(d.engine)
        pair = equity(d, sym, A, mark) + equity(d, sym, B, mark)
        new_mark = mark
        if action[0] == "mark":
            new_mark = to_tick(spec, mark * (1_000_000 + action[1]) // 1_000_000)
        inventory = inventory_move(d, sym, new_mark)
        try:
            step(d, spec, unit, action, n)
        except Rejected:
            assert digest(d.engine) == before, f"refused {action} changed the state"
            continue
        now = d.markets[sym].mark
        assert now is not None
        gained = equity(d, sym, A, now) + equity(d, sym, B, now) - pair
        assert gained + inventory <= 0, (
            f"{setup}: the pair took {gained + inventory} from the fund at {action}"
        )
        assert violations(d.engine) == []
    if not shortfalls:
        paid = [e for e in d.funds[asset].ledger if e.kind is FundKind.SHORTFALL]
        assert paid == [], f"the fund paid shortfalls {paid}"
