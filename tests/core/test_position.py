"""Position math: open, increase, reduce, close, flip; exact basis; inverse PnL.

Linear BTC-USDT: one quantity unit (0.001 BTC) times one price unit (0.01 USDT)
is 10 quantums, so a trade value is ``qty * price * 10``.
"""

from __future__ import annotations

from fractions import Fraction

from _kit import BTC, Desk, U, btc_usd_spec, btc_usdt_spec, usdt
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.core import BACKSTOP_ACCOUNT, FundKind, MarginTransfer, Position

LIN = btc_usdt_spec()
INV = btc_usd_spec()


def trade(pos: Position, qty: int, price: int, spec=LIN) -> int:  # type: ignore[no-untyped-def]
    return pos.trade(qty, spec.trade_value(qty, price))


def test_open_long_and_short() -> None:
    long, short = Position(1), Position(2)
    assert trade(long, 20, usdt("50000")) == 0
    assert trade(short, -20, usdt("50000")) == 0
    assert (long.size, long.basis) == (20, 1_000 * U)
    assert (short.size, short.basis) == (-20, -1_000 * U)
    assert not long.is_backstop and Position(BACKSTOP_ACCOUNT).is_backstop


def test_increase_averages_the_entry() -> None:
    pos = Position(1)
    trade(pos, 10, usdt("50000"))
    assert trade(pos, 30, usdt("54000")) == 0
    assert (pos.size, pos.basis) == (40, 2_120 * U)  # 500 + 1,620 -> entry 53,000
    d = Desk(LIN)
    d.open("BTC-USDT", 1, 2, usdt("50000"), 10, 1_000 * U, 1_000 * U)
    d.fill("BTC-USDT", 1, 2, usdt("54000"), 30)
    assert d.markets["BTC-USDT"].view(1).entry_price == usdt("53000")
    assert d.markets["BTC-USDT"].view(2).entry_price == usdt("53000")


def test_reduce_realises_pnl_against_the_average() -> None:
    pos = Position(1)
    trade(pos, 10, usdt("50000"))
    trade(pos, 30, usdt("54000"))
    # Sell 0.01 at 60,000 from an average of 53,000: +70 USDT.
    assert trade(pos, -10, usdt("60000")) == 70 * U
    assert (pos.size, pos.basis) == (30, 1_590 * U)
    # Then close the rest at 52,000: 0.03 x (52,000 - 53,000) = -30.
    assert trade(pos, -30, usdt("52000")) == -30 * U
    assert (pos.size, pos.basis) == (0, 0)


def test_short_pnl_sign() -> None:
    pos = Position(1)
    trade(pos, -20, usdt("50000"))
    assert trade(pos, 5, usdt("40000")) == 50 * U  # 0.005 x 10,000
    assert trade(pos, 15, usdt("51000")) == -15 * U  # 0.015 x -1,000
    assert (pos.size, pos.basis) == (0, 0)


def test_flip_through_zero() -> None:
    pos = Position(1)
    trade(pos, 20, usdt("50000"))
    # Sell 0.05 at 55,000: closes 0.02 (+100) and opens a 0.03 short at 55,000.
    assert trade(pos, -50, usdt("55000")) == 100 * U
    assert (pos.size, pos.basis) == (-30, -1_650 * U)
    # And back: buy 0.04 at 50,000: short closes +150, opens 0.01 long at 50,000.
    assert trade(pos, 40, usdt("50000")) == 150 * U
    assert (pos.size, pos.basis) == (10, 500 * U)


def test_basis_is_kept_exactly_through_uneven_reductions() -> None:
    pos = Position(1)
    trade(pos, 1, usdt("50000.10"))
    trade(pos, 2, usdt("50000"))
    assert pos.basis == 500_001 * 10**2 + 2 * 500_000 * 10**2  # 150,000,100 quantums
    # Thirds do not divide: the release rounds up (realised PnL down, against the
    # holder) and the rest stays in the basis.
    assert trade(pos, -1, usdt("50000")) == -34
    assert pos.basis == 100_000_066
    assert trade(pos, -2, usdt("50000")) == -66
    assert pos.basis == 0
    # Nothing lost: the realised total is exactly sells minus buys.
    assert -34 - 66 == 3 * 50_000_000 - 150_000_100


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=-50, max_value=50).filter(bool),
            st.integers(min_value=1, max_value=10**6),
        ),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([LIN, INV]),
)
def test_realised_plus_basis_is_cash_flow(trades: list[tuple[int, int]], spec) -> None:  # type: ignore[no-untyped-def]
    """Σ realised + remaining basis == −Σ trade values, whatever the path (no unit lost)."""
    pos = Position(1)
    realised = cash = size = 0
    for qty, ticks in trades:
        value = spec.trade_value(qty, ticks * spec.tick_size)
        realised += pos.trade(qty, value)
        cash -= value
        size += qty
        assert pos.size == size
        if pos.size == 0:
            assert pos.basis == 0
    assert realised - pos.basis == cash


def test_inverse_pnl_exact_case() -> None:
    # Long 100 x 100 USD contracts at 25,000, closed at 50,000:
    # 10,000 x (1/25,000 - 1/50,000) = 0.2 BTC.
    pos = Position(1)
    trade(pos, 100, 250_000, INV)
    assert pos.basis == -40_000_000  # value is -q x cv / P = -0.4 BTC
    assert trade(pos, -100, 500_000, INV) == 20_000_000


def test_inverse_pnl_rounds_to_the_quantum() -> None:
    # Long 100 contracts at 30,000, closed at 35,000: 10,000 x (1/30,000 - 1/35,000)
    # = 0.047619047619... BTC; each trade value rounds down, so within 2 quantums.
    # As in the engine, both sides of a trade book the same value with opposite signs.
    long, short = Position(1), Position(2)
    open_value = INV.trade_value(100, 300_000)
    long.trade(100, open_value)
    short.trade(-100, -open_value)
    exact = Fraction(10_000 * BTC, 30_000) - Fraction(10_000 * BTC, 35_000)
    close_value = INV.trade_value(-100, 350_000)
    got = long.trade(-100, close_value)
    assert got == 4_761_906
    assert abs(got - exact) < 2
    # The counterparty books exactly the opposite: nothing created by rounding.
    assert short.trade(100, -close_value) == -got


def test_inverse_short_pnl_sign() -> None:
    pos = Position(1)
    trade(pos, -200, 400_000, INV)  # short 20,000 USD at 40,000 = 0.5 BTC
    assert trade(pos, 200, 200_000, INV) == 50_000_000  # 20,000 x (1/20,000 - 1/40,000)


# --- through the engine: margin, fees, sweep ------------------------------------


def test_realised_pnl_stays_in_margin_and_close_sweeps_to_wallet() -> None:
    spec = btc_usdt_spec(fund_fee_share_ppm=250_000)
    d = Desk(spec)
    d.open("BTC-USDT", 1, 2, usdt("50000"), 20, 500 * U, 500 * U)
    assert (d.wallet("USDT", 1), d.pos("BTC-USDT", 1).margin) == (0, 500 * U)
    # Half closed at 51,000 with a 1,000,001-quantum fee each side.
    d.margin(3, "BTC-USDT", 100 * U)
    d.fill("BTC-USDT", 3, 1, usdt("51000"), 10, buyer_fee=1_000_001, seller_fee=1_000_001)
    p1 = d.pos("BTC-USDT", 1)
    assert (p1.size, p1.basis, p1.margin) == (10, 500 * U, 500 * U + 10 * U - 1_000_001)
    assert d.wallet("USDT", 1) == 0
    # Fee split: floor(25 %) of each fee to the fund, the rest to the fee pool.
    assert d.fund("USDT") == 2 * 250_000
    assert d.markets["BTC-USDT"].fee_pool == 2 * 750_001
    assert [e.kind for e in d.funds["USDT"].ledger] == [FundKind.TRADING_FEE] * 2
    # Closing the rest sweeps the whole margin back to the wallet and drops the record.
    d.fill("BTC-USDT", 2, 1, usdt("49000"), 10)
    assert d.pos("BTC-USDT", 1) is None
    assert d.wallet("USDT", 1) == 500 * U + 10 * U - 1_000_001 - 10 * U
    d.check()


def test_fill_that_flips_keeps_margin_with_the_position() -> None:
    d = Desk(LIN)
    d.open("BTC-USDT", 1, 2, usdt("50000"), 20, 500 * U, 500 * U)
    d.margin(3, "BTC-USDT", 500 * U)
    d.fill("BTC-USDT", 3, 1, usdt("52000"), 50)  # 1 sells 0.05: +40 and a 0.03 short
    p1 = d.pos("BTC-USDT", 1)
    assert (p1.size, p1.basis, p1.margin) == (-30, -1_560 * U, 540 * U)
    assert d.wallet("USDT", 1) == 0
    d.check()


def test_margin_only_position_keeps_record_until_withdrawn() -> None:
    d = Desk(LIN)
    d.margin(1, "BTC-USDT", 7 * U)
    assert (d.pos("BTC-USDT", 1).size, d.pos("BTC-USDT", 1).margin) == (0, 7 * U)
    d.apply(MarginTransfer(1, "BTC-USDT", -7 * U))
    assert d.pos("BTC-USDT", 1) is None
    assert d.wallet("USDT", 1) == 7 * U


def test_a_position_pickles_with_its_threshold_and_reads_the_older_index_key() -> None:
    import pickle

    from riskd.core.position import NOT_INDEXED, _restore_position

    pos = Position(7)
    pos.size, pos.basis, pos.margin, pos.threshold = -3, -150, 40, 52
    back = pickle.loads(pickle.dumps(pos))
    assert (back.account, back.size, back.basis, back.margin) == (7, -3, -150, 40)
    assert (back.threshold, back.liquidation) == (52, 0)
    # Snapshots from before: the fifth field was the key ``threshold << 64 | account``
    # (None: not indexed), or a CPython slot state with one under "key".
    assert _restore_position(7, -3, -150, 40, 52 << 64 | 7, 0).threshold == 52
    assert _restore_position(7, 0, 0, 40, None, 0).threshold == NOT_INDEXED
    old = Position(BACKSTOP_ACCOUNT)
    slots = {"account": BACKSTOP_ACCOUNT, "size": 1, "basis": 9, "margin": 2}
    old.__setstate__((None, {**slots, "key": 0 << 64 | BACKSTOP_ACCOUNT}))
    assert (old.threshold, old.liquidation, old.size) == (0, 0, 1)
    old.__setstate__((None, slots))
    assert old.threshold == NOT_INDEXED
