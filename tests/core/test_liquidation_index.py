"""The liquidation index's sorted entries against a plain sorted list (issue 17).

:class:`SortedPairs` splits and merges chunks of up to ``2 * _LOAD`` entries;
the random walks here are long enough to split, merge and empty chunks, and
every query is compared with the same query on a sorted list of
``(threshold, account)`` tuples.
"""

from __future__ import annotations

import pickle
import random
from bisect import bisect_left, insort

from hypothesis import given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedList

from riskd.core.liquidation_index import LiquidationIndex, SortedPairs
from riskd.core.margin import NEVER_SHORT
from riskd.core.position import BACKSTOP_ACCOUNT

Entry = tuple[int, int]


def _accounts(entries: list[Entry]) -> list[int]:
    return [a for _, a in entries]


def _check(pairs: SortedPairs, model: list[Entry], probes: list[int]) -> None:
    assert pairs.pairs() == ([t for t, _ in model], _accounts(model))
    assert len(pairs) == len(model)
    assert all(len(c) > 0 for c in pairs.thresholds)
    assert [len(c) for c in pairs.thresholds] == [len(c) for c in pairs.accounts]
    assert pairs.last_thresholds == [c[-1] for c in pairs.thresholds]
    assert pairs.last_accounts == [c[-1] for c in pairs.accounts]
    if model:
        assert (pairs.first_threshold(), pairs.last_threshold()) == (model[0][0], model[-1][0])
    for p in probes:
        at = bisect_left(model, (p, -1))
        assert pairs.from_threshold(p) == _accounts(model[at:])
        assert pairs.below_threshold(p) == _accounts(model[:at])
        for q in (p, p + 1, p + 77):
            assert pairs.between_thresholds(p, q) == [a for t, a in model if p <= t < q]


def test_a_long_random_walk_matches_a_sorted_list() -> None:
    rng = random.Random(17)
    pairs, model = SortedPairs(), list[Entry]()
    accounts = list(range(1, 6_001))
    rng.shuffle(accounts)
    for step in range(6_000):
        if model and rng.random() < (0.35 if step < 4_000 else 0.8):
            t, a = model.pop(rng.randrange(len(model)))
            pairs.remove(t, a)
        else:
            entry = (rng.randrange(500), accounts.pop())  # threshold ties, broken by account
            pairs.add(*entry)
            insort(model, entry)
        if step % 500 == 0:
            _check(pairs, model, [rng.randrange(-10, 510) for _ in range(5)])
    assert max(len(c) for c in pairs.thresholds) <= 2 * 512
    _check(pairs, model, [-1, 0, 250, 500])
    while model:  # emptied: every chunk goes
        pairs.remove(*model.pop())
    assert pairs.thresholds == [] and pairs.last_thresholds == [] and len(pairs) == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 12), st.integers(0, 5)), max_size=80),
    st.integers(-1, 14),
)
def test_random_adds_and_removes_match_a_sorted_list(
    ops: list[tuple[bool, int, int]], p: int
) -> None:
    pairs, model = SortedPairs(), list[Entry]()
    for add, t, a in ops:
        if (t, a) in model:
            if not add:
                pairs.remove(t, a)
                model.remove((t, a))
        elif add:
            pairs.add(t, a)
            insort(model, (t, a))
    _check(pairs, model, [p])


def test_removing_a_missing_entry_is_an_error() -> None:
    pairs = SortedPairs([1, 3], [7, 7])
    for t, a in ((0, 7), (2, 7), (4, 7), (1, 8), (3, 6)):
        try:
            pairs.remove(t, a)
        except ValueError:
            continue
        raise AssertionError(f"removed missing {(t, a)}")
    assert pairs.pairs() == ([1, 3], [7, 7])


def test_thresholds_and_accounts_beyond_the_unboxed_range_order_the_same() -> None:
    # NEVER_SHORT (2**63) and the backstop's account (2**64 - 1) are long ints
    # even in the compiled core: the search must order them all the same.
    pairs, model = SortedPairs(), list[Entry]()
    for entry in ((NEVER_SHORT, 5), (5, BACKSTOP_ACCOUNT), (5, 4), (NEVER_SHORT, BACKSTOP_ACCOUNT)):
        pairs.add(*entry)
        insort(model, entry)
    _check(pairs, model, [4, 5, 6, NEVER_SHORT, NEVER_SHORT + 1])
    pairs.remove(5, BACKSTOP_ACCOUNT)
    assert pairs.pairs() == ([5, NEVER_SHORT, NEVER_SHORT], [4, 5, BACKSTOP_ACCOUNT])


def test_move_removes_and_adds_and_an_unchanged_entry_stays() -> None:
    idx = LiquidationIndex()
    idx.add(True, 300, 2)
    idx.move(True, 300, True, 300, 2)
    assert idx.crossed(300) == [2]
    idx.move(True, 300, False, 400, 2)
    assert idx.crossed(300) == [] and idx.crossed(400) == [2] and len(idx) == 1
    assert idx.any_crossed(400) and not idx.any_crossed(399)


def test_ties_cross_longs_by_account_descending_and_shorts_ascending() -> None:
    # The order a key ``threshold << 64 | account`` gave, which effects depend on.
    idx = LiquidationIndex()
    for a in (5, 3, 9):
        idx.add(True, 100, a)
        idx.add(False, 200, a)
    assert idx.crossed(100) == [9, 5, 3] and idx.crossed(200) == [3, 5, 9]
    assert idx.longs_between(100, 101) == [3, 5, 9] and idx.shorts_between(199, 200) == [3, 5, 9]


def test_the_index_pickles_as_threshold_and_account_lists_and_reads_older_snapshots() -> None:
    idx = LiquidationIndex()
    for t, a in ((300, 2), (100, 3), (200, 1)):
        idx.add(True, t, a)
    idx.add(False, 500, 4)
    state = idx.__getstate__()
    assert state == (None, {"_longs": ([100, 200, 300], [3, 1, 2]), "_shorts": ([500], [4])})
    back = pickle.loads(pickle.dumps(idx))
    assert back.crossed(150) == [2, 1] and back.nearest() == (300, 500)
    # Snapshots from before SortedPairs: one list of keys per side, and older
    # still a SortedList of them.
    keys = [t << 64 | a for t, a in ((100, 3), (200, 1), (300, 2))]
    for longs in (keys, SortedList(keys)):
        old = LiquidationIndex()
        old.__setstate__((None, {"_longs": longs, "_shorts": [500 << 64 | BACKSTOP_ACCOUNT]}))
        assert old.crossed(150) == [2, 1] and old.nearest() == (300, 500)
        assert old.crossed(500) == [BACKSTOP_ACCOUNT]
        assert old.__getstate__()[1]["_longs"] == state[1]["_longs"]
