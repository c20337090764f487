"""The bounded memory of recently used ids (:mod:`riskd.core.recent_ids`)."""

from __future__ import annotations

import pickle

import pytest

from riskd.core import Code, Rejected
from riskd.core.recent_ids import _RECENT, MAX_ID, RecentIds, check_id, fingerprint


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


def test_ids_older_than_the_window_are_forgotten_first_in_first_out() -> None:
    m = RecentIds(capacity=3)
    for i in (10, 11, 12):
        m.remember(i, fingerprint(i))
    assert m.items() == [(10, fingerprint(10)), (11, fingerprint(11)), (12, fingerprint(12))]
    m.remember(13, fingerprint(13))
    assert len(m) == 3 and 10 not in m
    m.check(10, fingerprint(99), "trade_id", "fill")  # forgotten: not checked any more
    assert [i for i, _ in m.items()] == [11, 12, 13]
    for i in (11, 12, 13):
        refusal(m, i, fingerprint(i))
    m.remember(10, fingerprint(10))  # reused after it left the window: remembered again
    assert [i for i, _ in m.items()] == [12, 13, 10]
    for i in (12, 13, 10):
        assert m.fingerprint_of(i) == fingerprint(i)
    assert 11 not in m


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
    fresh = RecentIds(capacity=3)
    for i in (3, 4, 5):
        fresh.remember(i, fingerprint(i))
    assert wrapped.canonical() == fresh.canonical()
    reordered = RecentIds(capacity=3)
    for i in (3, 5, 4):
        reordered.remember(i, fingerprint(i))
    assert reordered.canonical() != fresh.canonical()
    other_payload = RecentIds(capacity=3)
    for i in (3, 4, 5):
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
