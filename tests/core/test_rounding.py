"""Rounding that cannot be farmed (issue 11, item 3).

An inverse trade's value (contracts × contract value / price) is rarely a whole
number of quantums.  Each side of a fill rounds its own value against itself
(:meth:`MarketSpec.side_value`), the fill's residue goes to the market's fee
pool, and a reduce releases its basis rounded against the holder: so no
sequence of fills at one price moves value from one trader to another.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

from _kit import BTC, Desk, U, btc_usd_spec, btc_usdt_spec
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.core import Deposit, MarginTransfer, MarketSpec

INV = btc_usd_spec()
LIN = btc_usdt_spec()
ACCOUNTS = (1, 2, 3)


def equity(d: Desk, market: str, account: int, price: int) -> Fraction:
    """Wallet + isolated margin + exact unrealised PnL at ``price``."""
    m = d.markets[market]
    total = Fraction(d.wallet(m.asset, account))
    pos = m.positions.get(account)
    if pos is not None:
        num, den = m.spec.value(pos.size, price)
        total += pos.margin + Fraction(num, den) - pos.basis
    return total


def funded(spec: MarketSpec, amount: int, band: int = 0, mark: int | None = None) -> Desk:
    d = Desk(dataclasses.replace(spec, fill_price_band_ppm=band))
    for a in ACCOUNTS:
        d.apply(Deposit(a, spec.asset.symbol, 2 * amount))
        d.apply(MarginTransfer(a, spec.symbol, amount))
    if mark is not None:
        d.mark(spec.symbol, mark)
    return d


def test_each_side_rounds_its_own_value_up() -> None:
    for qty in (1, 2, 3, 7, 1000):
        for price in (100_005, 333_335, 500_005, 999_995):
            exact = Fraction(*INV.value(qty, price))
            buy, sell = INV.side_value(qty, price), INV.side_value(-qty, price)
            assert buy - 1 < exact <= buy and sell - 1 < -exact <= sell
            assert buy + sell == (0 if exact.denominator == 1 else 1)
    assert LIN.side_value(3, 5_000_010) + LIN.side_value(-3, 5_000_010) == 0


def test_buy_buy_sell_two_cannot_farm_a_satoshi() -> None:
    """The attack's own sequence: 2,000 cycles of buy 1, buy 1, sell 2 at one price."""
    d = funded(INV, 10 * BTC)
    price = 500_005  # 50,000.5 USD: 100 USD is 199,998.00002 satoshi
    start = {a: equity(d, "BTC-USD", a, price) for a in (1, 2)}
    for _ in range(2_000):
        for a in (1, 2):  # a closed position's margin went back to the wallet
            d.apply(MarginTransfer(a, "BTC-USD", 10))
        d.fill("BTC-USD", 1, 2, price, 1)
        d.fill("BTC-USD", 1, 2, price, 1)
        d.fill("BTC-USD", 2, 1, price, 2)
    assert d.pos("BTC-USD", 1) is None and d.pos("BTC-USD", 2) is None
    lost = {a: start[a] - equity(d, "BTC-USD", a, price) for a in (1, 2)}
    # Neither side gained: both paid their own rounding, all of it to the fee pool.
    assert lost[1] >= 0 and lost[2] >= 0
    assert lost[1] + lost[2] == d.markets["BTC-USD"].fee_pool > 0
    d.check()


def test_reduce_releases_basis_against_the_holder() -> None:
    """Buy 3, sell 1, sell 1, sell 1: the realised PnL of each third rounds down."""
    d = funded(INV, 10 * BTC)
    price = 500_005
    d.fill("BTC-USD", 1, 2, price, 3)
    pos = d.pos("BTC-USD", 1)
    basis, margin = pos.basis, pos.margin
    d.fill("BTC-USD", 3, 1, price, 1)
    released = basis - pos.basis
    assert released == -((-basis) // 3)  # ceil: the margin gets the lower share
    assert pos.margin == margin - INV.side_value(-1, price) - released
    d.check()


@settings(max_examples=150, deadline=None)
@given(
    spec=st.sampled_from([INV, LIN]),
    ticks=st.integers(min_value=20_000, max_value=200_000),
    trades=st.lists(
        st.tuples(st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS), st.integers(1, 400)).filter(
            lambda t: t[0] != t[1]
        ),
        min_size=1,
        max_size=25,
    ),
    band=st.booleans(),
)
def test_round_trips_at_one_price_move_nothing_between_traders(
    spec: MarketSpec, ticks: int, trades: list[tuple[int, int, int]], band: bool
) -> None:
    """Any fills at one price, then every position closed at that price.

    After every fill no trader's exact equity at that price has risen; at the
    end each trader has lost what its own roundings cost (0 on linear markets)
    and the fee pool holds exactly the sum.
    """
    price = ticks * spec.tick_size
    amount = 1_000 * BTC if spec is INV else 10**7 * U
    d = funded(spec, amount, 50_000 if band else 0, price if band else None)
    sym = spec.symbol
    seen = {a: equity(d, sym, a, price) for a in ACCOUNTS}
    start = dict(seen)

    def step(buyer: int, seller: int, qty: int) -> None:
        for a in (buyer, seller):  # a closed position's margin went back to the wallet
            pos = d.markets[sym].positions.get(a)
            if pos is None or pos.margin < amount // 2:
                d.apply(MarginTransfer(a, sym, amount // 2))
        d.fill(sym, buyer, seller, price, qty)
        for a in ACCOUNTS:
            now = equity(d, sym, a, price)
            assert now <= seen[a], f"account {a} gained {now - seen[a]} from a fill at one price"
            seen[a] = now
        d.check()

    for buyer, seller, qty in trades:
        step(buyer, seller, qty)
    # Close out: longs sell to shorts until every position is flat.
    while True:
        sizes = {a: p.size for a, p in d.markets[sym].positions.items() if p.size}
        if not sizes:
            break
        long = max(sizes, key=lambda a: sizes[a])
        short = min(sizes, key=lambda a: sizes[a])
        step(short, long, min(sizes[long], -sizes[short]))
    lost = {a: start[a] - equity(d, sym, a, price) for a in ACCOUNTS}
    assert all(x >= 0 for x in lost.values())
    assert sum(lost.values()) == d.markets[sym].fee_pool
    if spec.is_linear:
        assert d.markets[sym].fee_pool == 0
