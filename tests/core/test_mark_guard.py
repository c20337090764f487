"""The mark-price guard (riskd.core.mark_guard): a wrong-looking mark liquidates nobody."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.core import Code, MarginTransfer, MarkPrice, Rejected
from riskd.core.events import LiquidationSettled, MarkGuardChanged, MarkGuardOverride
from riskd.core.mark_guard import GuardReason, judge, stale
from riskd.core.market_status import MarketStatus

from ._kit import Desk, U, assert_rejected, btc_usdt_spec, of_type, usdt

M = "BTC-USDT"
GUARD = {
    "mark_max_jump_ppm": 50_000,
    "mark_max_divergence_ppm": 20_000,
    "mark_stale_after_ms": 5_000,
}


def desk(**kw: int) -> Desk:
    d = Desk(btc_usdt_spec(**{**GUARD, **kw}))
    d.inject("USDT", 1_000_000 * U)
    # Account 1 long 1 BTC at 50,000 with 1,000 USDT (liquidated near 49,200),
    # account 2 short with plenty.
    d.mark(M, usdt("50000"), ts=1_000)
    d.open(M, 1, 2, usdt("50000"), 1_000, 1_000 * U, 20_000 * U, ts=1_000)
    return d


def mark(d: Desk, price: str, ts: int, index: str = "0") -> list[object]:
    return d.apply(MarkPrice(M, usdt(price), ts, usdt(index)))


def test_judge_is_exact_at_the_limits() -> None:
    assert judge(100_000, 105_000, 0, 50_000, 0) is None  # exactly 5 %: passes
    assert judge(100_000, 105_001, 0, 50_000, 0) is GuardReason.JUMP
    assert judge(100_000, 94_999, 0, 50_000, 0) is GuardReason.JUMP
    assert judge(None, 1, 0, 50_000, 0) is None  # the first mark has nothing to jump from
    assert judge(100_000, 102_000, 100_000, 0, 20_000) is None
    assert judge(100_000, 102_001, 100_000, 0, 20_000) is GuardReason.DIVERGENCE
    assert judge(100_000, 200_000, 0, 0, 20_000) is None  # no index, no divergence check
    assert judge(100_000, 200_000, 100_000, 0, 0) is None  # both checks off
    assert stale(1_000, 6_001, 5_000) and not stale(1_000, 6_000, 5_000)
    assert not stale(0, 10**12, 5_000) and not stale(1_000, 0, 5_000)  # unstamped: unknown
    assert not stale(1_000, 10**12, 0)


def test_a_jump_through_the_liquidation_price_liquidates_nobody_until_confirmed() -> None:
    d = desk()
    out = mark(d, "47000", ts=2_000)  # 6 % down: past account 1's liquidation price
    m = d.markets[M]
    assert m.guarded and m.guard.reason is GuardReason.JUMP
    assert not m.liquidations and not of_type(out, LiquidationSettled)
    [changed] = of_type(out, MarkGuardChanged)
    assert (changed.reason, changed.mark, changed.good_mark) == ("jump", 4_700_000, 5_000_000)
    assert m.mark == usdt("47000") and m.guard_mark == usdt("50000")
    # Positions stay valued at the newest mark.
    view = m.view(1)
    assert view is not None and view.unrealised == -3_000 * U
    d.check()
    # The same level again is no jump from the mark before it: the guard clears
    # and that mark liquidates.
    out = mark(d, "47000", ts=3_000)
    assert not m.guarded and m.guard_mark == usdt("47000")
    assert [c.reason for c in of_type(out, MarkGuardChanged)] == [""]
    assert of_type(out, LiquidationSettled) and d.pos(M, 1) is None
    d.check()


def test_one_outlier_tick_costs_two_ticks_of_guard_and_no_liquidation() -> None:
    d = desk()
    m = d.markets[M]
    mark(d, "40000", ts=2_000)
    assert m.guarded
    mark(d, "50000", ts=3_000)  # back: a jump from the outlier, still guarded
    assert m.guard.reason is GuardReason.JUMP and not m.liquidations
    mark(d, "50010", ts=4_000)
    assert not m.guarded and not m.liquidations and d.pos(M, 1).size == 1_000


def test_divergence_from_the_index_guards_and_clears() -> None:
    d = desk()
    m = d.markets[M]
    out = mark(d, "49000", ts=2_000, index="51000")  # 3.9 % from the index
    assert m.guard.reason is GuardReason.DIVERGENCE and of_type(out, MarkGuardChanged)
    assert m.guard_mark == usdt("50000")
    mark(d, "49000", ts=3_000)  # no index sent: only the jump is checked
    assert not m.guarded
    mark(d, "49100", ts=4_000, index="49000")
    assert not m.guarded


def test_a_stale_mark_is_judged_from_the_next_input_timestamp() -> None:
    d = desk()
    m = d.markets[M]
    d.margin(3, M, 1_000 * U)
    d.margin(4, M, 1_000 * U)
    out = d.fill(M, 3, 4, usdt("50000"), 10, ts=6_000)  # 5 s after the mark: not yet stale
    assert not m.guarded and not of_type(out, MarkGuardChanged)
    out = d.fill(M, 4, 3, usdt("50000"), 10, ts=6_001)
    assert m.guard.reason is GuardReason.STALE
    assert [c.reason for c in of_type(out, MarkGuardChanged)] == ["stale"]
    mark(d, "50000", ts=7_000)
    assert not m.guarded


def test_no_margin_leaves_a_position_while_guarded() -> None:
    d = desk()
    mark(d, "60000", ts=2_000)  # a jump up: account 1 would look rich
    assert_rejected(
        d.engine, MarginTransfer(1, M, -10 * U, 2_500), Code.FAILED_PRECONDITION, "market"
    )


def test_an_operator_holds_and_clears_the_guard() -> None:
    d = desk()
    m = d.markets[M]
    assert_rejected(
        d.engine, MarkGuardOverride(M, False, 1_500), Code.FAILED_PRECONDITION, "market"
    )
    out = d.apply(MarkGuardOverride(M, True, 1_500))
    assert m.guard.reason is GuardReason.ADMIN and of_type(out, MarkGuardChanged)
    mark(d, "49000", ts=2_000)  # a sane mark does not clear a hold
    assert m.guard.reason is GuardReason.ADMIN and m.guard_mark == usdt("50000")
    mark(d, "47000", ts=3_000)
    assert not m.liquidations
    out = d.apply(MarkGuardOverride(M, False, 3_500))  # the operator vouches for 47,000
    assert not m.guarded and m.guard_mark == usdt("47000")
    assert of_type(out, LiquidationSettled) and d.pos(M, 1) is None
    d.check()


def test_a_bad_index_price_is_refused_and_changes_nothing() -> None:
    d = desk()
    assert_rejected(
        d.engine, MarkPrice(M, usdt("50000"), 2_000, -1), Code.INVALID_ARGUMENT, "index_price"
    )
    assert_rejected(
        d.engine, MarkPrice(M, usdt("50000"), 2_000, 2**63), Code.INVALID_ARGUMENT, "index_price"
    )


def test_without_limits_the_guard_never_engages() -> None:
    d = Desk(btc_usdt_spec())
    d.inject("USDT", 1_000_000 * U)
    d.mark(M, usdt("50000"), ts=1_000)
    d.open(M, 1, 2, usdt("50000"), 1_000, 1_000 * U, 20_000 * U, ts=1_000)
    out = mark(d, "20000", ts=10**9, index="90000")
    assert not d.markets[M].guarded and of_type(out, LiquidationSettled)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-120_000, 120_000),  # move in ppm from the previous mark
            st.integers(-60_000, 60_000),  # index distance in ppm (0: none sent)
            st.integers(0, 9_000),  # ms since the previous input
            st.booleans(),  # a mark (else a tiny fill: only staleness can guard it)
        ),
        min_size=1,
        max_size=25,
    )
)
def test_no_liquidation_is_ever_decided_on_a_guarded_mark(
    steps: list[tuple[int, int, int, bool]],
) -> None:
    d = desk()
    m = d.markets[M]
    d.margin(3, M, 5_000 * U)
    d.margin(4, M, 5_000 * U)
    ts, price = 1_000, usdt("50000")
    for move, gap, dt, is_mark in steps:
        ts += dt
        before = (m.next_liquidation, m.guard.good_mark)
        if is_mark:
            price = max(10, (price + price * move // 1_000_000) // 10 * 10)
            index = price + price * gap // 1_000_000 if gap else 0
            try:
                out = d.apply(MarkPrice(M, price, ts, index))
            except Rejected:
                continue
        else:
            try:
                out = d.fill(M, 3, 4, m.mark or price, 1, ts=ts)
            except Rejected:
                continue
        if m.guarded:
            assert m.next_liquidation == before[0], "a liquidation started on a guarded mark"
            assert not of_type(out, LiquidationSettled)
        elif m.next_liquidation != before[0]:
            # Whatever started was decided on a mark that passed every check.
            assert m.guard.good_mark == m.mark
        d.check()


def test_old_snapshots_load_unguarded_with_their_mark_as_good() -> None:
    d = desk()
    m = d.markets[M]
    mark(d, "47000", ts=2_000)  # guarded now: a snapshot would carry it
    assert pickle.loads(pickle.dumps(m)).guard.reason is GuardReason.JUMP
    state = m.__getstate__()
    del state["status"], state["guard"]  # as a snapshot from before the guard
    old = pickle.loads(pickle.dumps(m))
    old.__setstate__(state)
    assert not old.guarded and old.guard_mark == m.mark == old.guard.good_mark
    assert old.status is MarketStatus.OPEN
