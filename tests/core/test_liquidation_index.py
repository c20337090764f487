"""The liquidation index's sorted positions against a plain sorted list (issue 17).

:class:`SortedPositions` splits and merges chunks of up to ``2 * _LOAD``
positions; the random walks here are long enough to split, merge and empty
chunks, and every query is compared with the same query on a sorted list of
``(threshold, account)`` tuples.
"""

from __future__ import annotations

import pickle
import random
from bisect import bisect_left, insort

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedList

from riskd.core.liquidation_index import LiquidationIndex, SortedPositions
from riskd.core.margin import NEVER_SHORT
from riskd.core.position import BACKSTOP_ACCOUNT, Position

Entry = tuple[int, int]


def at(threshold: int, account: int) -> Position:
    pos = Position(account)
    pos.threshold = threshold
    return pos


def _accounts(entries: list[Entry]) -> list[int]:
    return [a for _, a in entries]


def _check(index: SortedPositions, model: list[Entry], probes: list[int]) -> None:
    assert [(p.threshold, p.account) for p in index.positions()] == model
    assert len(index) == len(model)
    assert all(len(c) > 0 for c in index.chunks)
    assert index.lasts == [c[-1] for c in index.chunks]
    if model:
        assert (index.first_threshold(), index.last_threshold()) == (model[0][0], model[-1][0])
    for p in probes:
        i = bisect_left(model, (p, -1))
        assert index.from_threshold(p) == _accounts(model[i:])
        assert index.below_threshold(p) == _accounts(model[:i])
        for q in (p, p + 1, p + 77):
            assert index.between_thresholds(p, q) == [a for t, a in model if p <= t < q]


def test_a_long_random_walk_matches_a_sorted_list() -> None:
    rng = random.Random(17)
    index, model, live = SortedPositions(), list[Entry](), dict[int, Position]()
    accounts = list(range(1, 6_001))
    rng.shuffle(accounts)
    for step in range(6_000):
        if model and rng.random() < (0.35 if step < 4_000 else 0.8):
            _, a = model.pop(rng.randrange(len(model)))
            index.remove(live.pop(a))
        else:
            pos = at(rng.randrange(500), accounts.pop())  # threshold ties, broken by account
            index.add(pos)
            live[pos.account] = pos
            insort(model, (pos.threshold, pos.account))
        if step % 500 == 0:
            _check(index, model, [rng.randrange(-10, 510) for _ in range(5)])
    assert max(len(c) for c in index.chunks) <= 2 * 512
    _check(index, model, [-1, 0, 250, 500])
    while model:  # emptied: every chunk goes
        index.remove(live.pop(model.pop()[1]))
    assert index.chunks == [] and index.lasts == [] and len(index) == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 12), st.integers(0, 5)), max_size=80),
    st.integers(-1, 14),
)
def test_random_adds_and_removes_match_a_sorted_list(
    ops: list[tuple[bool, int, int]], p: int
) -> None:
    index, model, live = SortedPositions(), list[Entry](), dict[int, Position]()
    for add, t, a in ops:
        if a in live:
            if not add:
                index.remove(live.pop(a))
                model.remove(next(e for e in model if e[1] == a))
        elif add:
            live[a] = at(t, a)
            index.add(live[a])
            insort(model, (t, a))
    _check(index, model, [p])


def test_removing_a_position_not_there_is_an_error() -> None:
    one, three = at(1, 7), at(3, 8)
    index = SortedPositions([one, three])
    twin = at(1, 7)  # the same numbers, another object: not the indexed position
    for pos in (twin, at(0, 7), at(2, 7), at(4, 7), at(3, 7)):
        with pytest.raises(ValueError):
            index.remove(pos)
    assert index.positions() == [one, three]


def test_thresholds_and_accounts_beyond_the_unboxed_range_order_the_same() -> None:
    # NEVER_SHORT (2**63) and the backstop's account (2**64 - 1) are long ints
    # even in the compiled core: the search must order them all the same.
    entries = [(NEVER_SHORT, 5), (5, BACKSTOP_ACCOUNT), (5, 4), (NEVER_SHORT, BACKSTOP_ACCOUNT)]
    index, model, live = SortedPositions(), list[Entry](), dict[Entry, Position]()
    for t, a in entries:
        live[t, a] = at(t, a)
        index.add(live[t, a])
        insort(model, (t, a))
    _check(index, model, [4, 5, 6, NEVER_SHORT, NEVER_SHORT + 1])
    index.remove(live[5, BACKSTOP_ACCOUNT])
    assert [p.account for p in index.positions()] == [4, 5, BACKSTOP_ACCOUNT]


def test_ties_cross_longs_by_account_descending_and_shorts_ascending() -> None:
    # The order a key ``threshold << 64 | account`` gave, which effects depend on.
    idx = LiquidationIndex()
    for a in (5, 3, 9):
        idx.add(True, at(100, a))
        idx.add(False, at(200, a))
    assert idx.crossed(100) == [9, 5, 3] and idx.crossed(200) == [3, 5, 9]
    assert idx.longs_between(100, 101) == [3, 5, 9] and idx.shorts_between(199, 200) == [3, 5, 9]
    assert idx.any_crossed(100) and not idx.any_crossed(150)


def test_the_index_pickles_its_positions_and_reads_older_snapshots() -> None:
    positions = {a: at(t, a) for t, a in ((300, 2), (100, 3), (200, 1), (500, 4))}
    idx = LiquidationIndex()
    for a in (2, 3, 1):
        idx.add(True, positions[a])
    idx.add(False, positions[4])
    state = idx.__getstate__()
    assert state == (None, {"_longs": [positions[a] for a in (3, 1, 2)], "_shorts": [positions[4]]})
    market, back = pickle.loads(pickle.dumps((positions, idx)))
    assert back.crossed(150) == [2, 1] and back.nearest() == (300, 500)
    assert back.__getstate__()[1]["_longs"][0] is market[3]  # the same objects, not copies
    # Snapshots from before SortedPositions: one list of keys per side, and
    # older still a SortedList of them; the market hands its positions over.
    keys = [t << 64 | a for t, a in ((100, 3), (200, 1), (300, 2))]
    for longs in (keys, SortedList(keys)):
        own = {a: Position(a) for a in (1, 2, 3, BACKSTOP_ACCOUNT)}
        old = LiquidationIndex()
        old.__setstate__((None, {"_longs": longs, "_shorts": [500 << 64 | BACKSTOP_ACCOUNT]}))
        old.adopt(own)
        assert old.crossed(150) == [2, 1] and old.nearest() == (300, 500)
        assert old.crossed(500) == [BACKSTOP_ACCOUNT]
        assert [p.threshold for p in old.__getstate__()[1]["_longs"]] == [100, 200, 300]
        assert old.__getstate__()[1]["_longs"][0] is own[3]
        old.remove(True, own[2])  # the market's own positions are the ones indexed
        assert old.crossed(150) == [1]
    orphan = LiquidationIndex()
    orphan.__setstate__((None, {"_longs": [5 << 64 | 9], "_shorts": []}))
    with pytest.raises(ValueError):  # an index entry without a position: not a sound snapshot
        orphan.adopt({})
