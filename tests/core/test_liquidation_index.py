"""The liquidation index's sorted keys against a plain sorted list (issue 17).

:class:`SortedKeys` splits and merges chunks of up to ``2 * _LOAD`` keys; the
random walks here are long enough to split, merge and empty chunks, and every
query is compared with the same query on a sorted Python list.
"""

from __future__ import annotations

import pickle
import random
from bisect import bisect_left

from hypothesis import given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedList

from riskd.core.liquidation_index import LiquidationIndex, SortedKeys


def _check(keys: SortedKeys, model: list[int], probes: list[int]) -> None:
    assert keys.keys() == model and len(keys) == len(model)
    assert all(len(c) > 0 for c in keys.chunks)
    assert keys.maxes == [c[-1] for c in keys.chunks]
    if model:
        assert (keys.first(), keys.last()) == (model[0], model[-1])
    for p in probes:
        assert keys.at_least(p) == model[bisect_left(model, p) :]
        assert keys.below(p) == model[: bisect_left(model, p)]
        for q in (p, p + 1, p + 777):
            assert keys.between(p, q) == [k for k in model if p <= k < q]


def test_a_long_random_walk_matches_a_sorted_list() -> None:
    rng = random.Random(17)
    keys, model = SortedKeys(), list[int]()
    for step in range(6_000):
        if model and rng.random() < (0.35 if step < 4_000 else 0.8):
            k = model.pop(rng.randrange(len(model)))
            keys.remove(k)
        else:
            k = rng.randrange(5_000)  # duplicates too: a multiset
            keys.add(k)
            model.insert(bisect_left(model, k), k)
        if step % 500 == 0:
            _check(keys, model, [rng.randrange(-10, 5_010) for _ in range(5)])
    assert max(len(c) for c in keys.chunks) <= 2 * 512
    _check(keys, model, [-1, 0, 2_500, 5_000])
    while model:  # emptied: every chunk goes
        keys.remove(model.pop())
    assert keys.chunks == [] and keys.maxes == [] and len(keys) == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60)), max_size=80), st.integers(-1, 62))
def test_random_adds_and_removes_match_a_sorted_list(ops: list[tuple[bool, int]], p: int) -> None:
    keys, model = SortedKeys(), list[int]()
    for add, k in ops:
        if add or k not in model:
            keys.add(k)
            model.insert(bisect_left(model, k), k)
        else:
            keys.remove(k)
            model.remove(k)
    _check(keys, model, [p])


def test_removing_a_missing_key_is_an_error() -> None:
    keys = SortedKeys([1, 3])
    for k in (0, 2, 4):
        try:
            keys.remove(k)
        except ValueError:
            continue
        raise AssertionError(f"removed missing {k}")
    assert keys.keys() == [1, 3]


def test_move_removes_and_adds_and_an_unchanged_key_stays() -> None:
    idx = LiquidationIndex()
    idx.add(True, LiquidationIndex.key(300, 2))
    idx.move(True, LiquidationIndex.key(300, 2), True, LiquidationIndex.key(300, 2))
    assert idx.crossed(300) == [2]
    idx.move(True, LiquidationIndex.key(300, 2), False, LiquidationIndex.key(400, 2))
    assert idx.crossed(300) == [] and idx.crossed(400) == [2] and len(idx) == 1
    assert idx.any_crossed(400) and not idx.any_crossed(399)


def test_the_index_pickles_as_sorted_key_lists_and_reads_a_sortedlist_snapshot() -> None:
    idx = LiquidationIndex()
    for t, a in ((300, 2), (100, 3), (200, 1)):
        idx.add(True, LiquidationIndex.key(t, a))
    idx.add(False, LiquidationIndex.key(500, 4))
    state = idx.__getstate__()
    assert state == (
        None,
        {
            "_longs": sorted(LiquidationIndex.key(t, a) for t, a in ((300, 2), (100, 3), (200, 1))),
            "_shorts": [LiquidationIndex.key(500, 4)],
        },
    )
    back = pickle.loads(pickle.dumps(idx))
    assert back.crossed(150) == [2, 1] and back.nearest() == (300, 500)
    # The shape a snapshot from before SortedKeys holds.
    old = LiquidationIndex()
    old.__setstate__((None, {"_longs": SortedList(state[1]["_longs"]), "_shorts": SortedList()}))
    assert old.crossed(150) == [2, 1] and old.nearest() == (300, None)
