"""The bounded memory of recently used ids (:mod:`riskd.core.recent_ids`)."""

from __future__ import annotations

import pickle
from array import array

import pytest

from riskd.core import Code, Rejected
from riskd.core.recent_ids import (
    _RECENT,
    MAX_ID,
    RecentIds,
    WithdrawalDecision,
    WithdrawalDecisions,
    check_id,
    fingerprint,
)


def refusal(memory: RecentIds, id_: int, payload: int) -> Rejected:
    with pytest.raises(Rejected) as info:
        memory.check(id_, payload, "trade_id", "fill")
    assert info.value.code is Code.FAILED_PRECONDITION
    assert info.value.field == "trade_id"
    return info.value


def test_a_remembered_id_is_refused_saying_whether_the_payload_is_the_same() -> None:
    m = RecentIds()
    m.check(7, fingerprint(1, 2, 3), "trade_id", "fill")  # new: passes
    m.remember(7, fingerprint(1, 2, 3))
    assert 7 in m and len(m) == 1
    same = refusal(m, 7, fingerprint(1, 2, 3))
    assert "already applied" in same.message and "different" not in same.message
    other = refusal(m, 7, fingerprint(1, 2, 4))
    assert "different fill" in other.message and "already applied" not in other.message
    m.check(8, fingerprint(1, 2, 3), "trade_id", "fill")  # another id with the same payload


def test_id_zero_means_not_given_and_is_never_remembered_or_checked() -> None:
    m = RecentIds()
    m.remember(0, fingerprint(1))
    m.remember(0, fingerprint(2))
    assert len(m) == 0 and 0 not in m
    m.check(0, fingerprint(1), "trade_id", "fill")
    assert m.fingerprint_of(0) is None


def test_ids_older_than_the_window_are_forgotten_first_in_first_out_and_refused_as_too_old() -> (
    None
):
    m = RecentIds(capacity=3)
    for i in (10, 11, 12):
        m.remember(i, fingerprint(i))
    assert m.items() == [(10, fingerprint(10)), (11, fingerprint(11)), (12, fingerprint(12))]
    assert m.floor == 0
    m.remember(13, fingerprint(13))
    assert len(m) == 3 and 10 not in m and m.floor == 10
    # Forgotten, but never applied again: refused as too old, same payload or not.
    for payload in (fingerprint(10), fingerprint(99)):
        too_old = refusal(m, 10, payload)
        assert "too old" in too_old.message and "10" in too_old.message
    refusal(m, 3, fingerprint(3))  # never seen, but below the floor: cannot tell
    assert [i for i, _ in m.items()] == [11, 12, 13]
    for i in (11, 12, 13):
        assert "already applied" in refusal(m, i, fingerprint(i)).message
    m.check(14, fingerprint(14), "trade_id", "fill")  # above the floor: new
    m.remember(14, fingerprint(14))
    assert [i for i, _ in m.items()] == [12, 13, 14] and m.floor == 11
    for i in (12, 13, 14):
        assert m.fingerprint_of(i) == fingerprint(i)
    assert 11 not in m


def test_out_of_order_ids_within_the_window_are_fine() -> None:
    """Ids need only increase give or take the window: 5 after 7 is new while 5 > floor."""
    m = RecentIds(capacity=4)
    for i in (2, 1, 4, 3):
        m.check(i, fingerprint(i), "trade_id", "fill")
        m.remember(i, fingerprint(i))
    m.check(7, 0, "trade_id", "fill")
    m.remember(7, 0)  # 2 leaves: floor 2
    m.check(6, 0, "trade_id", "fill")
    m.remember(6, 0)  # 1 leaves: the floor stays 2 (the highest forgotten)
    assert m.floor == 2
    m.check(5, 0, "trade_id", "fill")
    refusal(m, 2, fingerprint(2))


def test_a_forgotten_id_never_applies_twice_whatever_the_order() -> None:
    """Hypothesis: any order of ids through a small memory; none accepted twice."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.integers(1, 6), st.lists(st.integers(1, 30), max_size=80))
    def run(capacity: int, ids: list[int]) -> None:
        m = RecentIds(capacity=capacity)
        applied: set[int] = set()
        for i in ids:
            try:
                m.check(i, fingerprint(i), "trade_id", "fill")
            except Rejected:
                continue
            assert i not in applied, f"{i} applied twice"
            applied.add(i)
            m.remember(i, fingerprint(i))
        # Increasing ids are never refused.
        top = max(ids, default=0)
        for i in range(top + 1, top + 3 * capacity):
            m.check(i, 0, "trade_id", "fill")
            m.remember(i, 0)

    run()


def test_the_floor_survives_pickling_and_old_pickles_restore_without_one() -> None:
    m = RecentIds(capacity=2)
    for i in (1, 2, 3):
        m.remember(i, fingerprint(i))
    again: RecentIds = pickle.loads(pickle.dumps(m))
    assert again.floor == 1
    refusal(again, 1, fingerprint(1))
    # A memory pickled before the floor existed: its state has no "floor".
    old = RecentIds(capacity=2)
    old.__setstate__(
        (
            None,
            {
                "capacity": 2,
                "_ids": set(),
                "_ring": array("Q"),
                "_next": 0,
                "_fingerprints": array("q"),
            },
        )
    )
    assert old.floor == 0 and len(old) == 0
    old.remember(5, 1)


def test_the_floor_is_part_of_the_canonical_form() -> None:
    a, b = RecentIds(capacity=2), RecentIds(capacity=2)
    for i in (1, 3, 4):
        a.remember(i, 0)
    for i in (2, 3, 4):
        b.remember(i, 0)
    assert a.items() == b.items()
    assert a.canonical() != b.canonical()  # 2 applies to a, not to b


# --- withdrawal decisions ------------------------------------------------------


def test_withdrawal_retries_get_the_original_decision() -> None:
    d = WithdrawalDecisions(capacity=10)
    assert d.recall(7, 1, 100) is None
    d.record(7, 1, 100, WithdrawalDecision(True, 900))
    assert d.recall(7, 1, 100) == WithdrawalDecision(True, 900)
    d.record(8, 1, 5_000, WithdrawalDecision(False, 900, "short"))
    assert d.recall(8, 1, 5_000) == WithdrawalDecision(False, 900, "short")
    for id_, account, amount in ((7, 1, 101), (7, 2, 100), (8, 1, 4_999)):
        with pytest.raises(Rejected) as info:
            d.recall(id_, account, amount)
        assert (info.value.code, info.value.field) == (Code.FAILED_PRECONDITION, "withdrawal_id")
        assert "different withdrawal" in info.value.message


def test_refused_withdrawals_never_push_an_approval_out() -> None:
    """Issue 11 item 1: one approval, then a flood of refusals, then the retry."""
    d = WithdrawalDecisions(capacity=100, refusals=10)
    d.record(7, 1, 1_000_000, WithdrawalDecision(True, 0))
    for i in range(8, 100_008):
        d.record(i, 2, 1, WithdrawalDecision(False, 0, "short"))
    assert len(d.refused) == 10
    assert d.recall(7, 1, 1_000_000) == WithdrawalDecision(True, 0)
    # A refusal forgotten is decided afresh (nothing was paid for it) ...
    assert d.recall(8, 2, 1) is None
    # ... and the newest ones are still answered as first decided.
    assert d.recall(100_007, 2, 1) == WithdrawalDecision(False, 0, "short")


def test_an_approval_older_than_the_window_is_refused_never_paid_again() -> None:
    d = WithdrawalDecisions(capacity=3)
    for i in range(1, 5):
        assert d.recall(i, 1, 10) is None
        d.record(i, 1, 10, WithdrawalDecision(True, 100 - 10 * i))
    assert d.approved.floor == 1
    with pytest.raises(Rejected) as info:
        d.recall(1, 1, 10)
    assert (info.value.code, info.value.field) == (Code.FAILED_PRECONDITION, "withdrawal_id")
    assert "too old" in info.value.message
    assert d.recall(2, 1, 10) == WithdrawalDecision(True, 80)
    assert d.recall(5, 1, 10) is None  # the next id is new


def test_fingerprints_are_found_after_the_ring_wraps_and_past_the_recent_part() -> None:
    cap = 2 * _RECENT + 5
    m = RecentIds(capacity=cap)
    n = cap + _RECENT + 123  # wrapped once, the oldest slot in the middle of the ring
    for i in range(1, n + 1):
        m.remember(i * 1_000_003, -i)
    assert len(m) == cap
    for i in (n - cap + 1, n - cap + 2, n - _RECENT - 1, n - _RECENT, n - 1, n):
        assert m.fingerprint_of(i * 1_000_003) == -i
    assert m.fingerprint_of((n - cap) * 1_000_003) is None


def test_remembering_a_remembered_id_is_a_bug() -> None:
    m = RecentIds()
    m.remember(5, 1)
    with pytest.raises(ValueError):
        m.remember(5, 1)
    with pytest.raises(ValueError):
        RecentIds(capacity=0)


def test_ids_must_fit_uint64() -> None:
    assert check_id(0, "trade_id") == 0
    assert check_id(MAX_ID, "trade_id") == MAX_ID
    for bad in (-1, MAX_ID + 1):
        with pytest.raises(Rejected) as info:
            check_id(bad, "deposit_id")
        assert (info.value.code, info.value.field) == (Code.INVALID_ARGUMENT, "deposit_id")
    m = RecentIds()
    m.remember(MAX_ID, fingerprint(1))
    assert m.fingerprint_of(MAX_ID) == fingerprint(1)


def test_canonical_is_the_remembered_ids_in_age_order_whatever_the_ring_rotation() -> None:
    wrapped = RecentIds(capacity=3)
    for i in range(1, 6):
        wrapped.remember(i, fingerprint(i))
    fresh = RecentIds(capacity=3)  # rotated differently, the same floor (2)
    for i in (2, 3, 4, 5):
        fresh.remember(i, fingerprint(i))
    assert wrapped.canonical() == fresh.canonical()
    reordered = RecentIds(capacity=3)
    for i in (2, 3, 5, 4):
        reordered.remember(i, fingerprint(i))
    assert reordered.canonical() != fresh.canonical()
    other_payload = RecentIds(capacity=3)
    for i in (2, 3, 4, 5):
        other_payload.remember(i, fingerprint(i + 1))
    assert other_payload.canonical() != fresh.canonical()


def test_fingerprints_are_the_same_in_every_process() -> None:
    # hash() of a tuple of ints has no per-process seed: the daemon, the pure
    # engine and a restart must agree.  (A str in the tuple would break this.)
    import subprocess
    import sys

    code = "from riskd.core.recent_ids import fingerprint; print(fingerprint(11, 12, 5_000_000, 3))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            check=True,
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2", "random")
    }
    assert outs == {str(fingerprint(11, 12, 5_000_000, 3))}


def test_snapshots_hold_the_rings_as_arrays_as_they_always_did() -> None:
    # The rings are lists in memory (native access when compiled); a snapshot
    # keeps the array shape, so older riskd versions' snapshots and new ones agree.
    m = RecentIds(capacity=3, values=True)
    for i in range(1, 5):
        m.remember(i, fingerprint(i), 10 * i)
    slots = m.__getstate__()[1]
    assert slots["_ring"] == array("Q", [4, 2, 3])
    assert slots["_fingerprints"] == array("q", [fingerprint(4), fingerprint(2), fingerprint(3)])
    assert slots["_values"] == array("q", [40, 20, 30])
    assert (slots["_next"], slots["floor"], slots["capacity"]) == (1, 1, 3)
    again = RecentIds()
    again.__setstate__((None, slots))
    assert again.items() == m.items() and again.canonical() == m.canonical()
    assert again.lookup(3) == (fingerprint(3), 30)


def test_a_pickled_memory_behaves_the_same() -> None:
    m = RecentIds(capacity=4)
    for i in range(1, 7):
        m.remember(i, fingerprint(i))
    again: RecentIds = pickle.loads(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL))
    assert again.items() == m.items() and again.canonical() == m.canonical()
    refusal(again, 6, fingerprint(6))
    again.remember(7, fingerprint(7))
    m.remember(7, fingerprint(7))
    assert again.items() == m.items()


def test_no_withdrawal_id_is_ever_approved_twice() -> None:
    """Hypothesis: any mix of approvals and refusals, retries and new ids, through
    small memories: an id is paid at most once, and a remembered decision is
    returned as it was."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(
        st.integers(1, 5),
        st.integers(1, 5),
        st.lists(st.tuples(st.integers(1, 25), st.booleans()), max_size=100),
    )
    def run(capacity: int, refusals: int, requests: list[tuple[int, bool]]) -> None:
        d = WithdrawalDecisions(capacity, refusals)
        paid: set[int] = set()
        first: dict[int, WithdrawalDecision] = {}
        for id_, affordable in requests:
            try:
                seen = d.recall(id_, 1, 10)
            except Rejected as r:
                assert r.field == "withdrawal_id"
                continue
            if seen is not None:
                assert seen == first[id_]
                continue
            decision = WithdrawalDecision(affordable, 0, "" if affordable else "short")
            if affordable:
                assert id_ not in paid, f"{id_} paid twice"
                paid.add(id_)
            first[id_] = decision
            d.record(id_, 1, 10, decision)

    run()
