"""Snapshots written by a forked child: the state as it was at the fork."""

from __future__ import annotations

from pathlib import Path

import pytest

from riskd.storage import StorageFault, snapshot


def test_the_child_writes_the_state_as_it_was_when_forked(tmp_path: Path) -> None:
    state = {"markets": {"BTC-USDT": list(range(100_000))}, "gateways": {"gw": 7}}
    pid = snapshot.write_in_child(tmp_path, 42, state)
    # The parent goes on changing the state while the child writes.
    state["markets"]["BTC-USDT"].clear()
    state["gateways"]["gw"] = 8
    assert snapshot.wait_child(pid)
    loaded = snapshot.read_latest(tmp_path)
    assert loaded is not None
    records, restored = loaded
    assert records == 42
    assert restored["markets"]["BTC-USDT"] == list(range(100_000))
    assert restored["gateways"] == {"gw": 7}


def test_a_child_that_cannot_write_reports_the_cause_as_a_storage_fault(tmp_path: Path) -> None:
    missing = tmp_path / "not-a-directory"
    pid = snapshot.write_in_child(missing, 1, {"x": 1})
    with pytest.raises(StorageFault) as fault:
        snapshot.wait_child(pid)
    assert fault.value.what == "snapshot" and "No such file or directory (ENOENT)" in str(
        fault.value
    )
    assert snapshot.read_latest(tmp_path) is None


def test_a_child_that_fails_otherwise_only_reports_failure(tmp_path: Path) -> None:
    pid = snapshot.write_in_child(tmp_path, 1, {"x": lambda: None})  # cannot be pickled
    assert not snapshot.wait_child(pid)
    assert snapshot.read_latest(tmp_path) is None


def test_the_header_names_the_journal_position(tmp_path: Path) -> None:
    snapshot.write(tmp_path, 7, snapshot.dumps({"v": 7}), "ab" * 32)
    snap = snapshot.load_latest(tmp_path)
    assert snap is not None and (snap.records, snap.journal_hash) == (7, "ab" * 32)
    journal = tmp_path / "journal.sqlite3"
    assert snapshot.mismatch(snap, journal, 7, "ab" * 32) is None
    assert snapshot.mismatch(snap, journal, 9, "ab" * 32) is None
    short = snapshot.mismatch(snap, journal, 6, None)
    assert short is not None and str(snap.path) in short and str(journal) in short
    other = snapshot.mismatch(snap, journal, 7, "cd" * 32)
    assert other is not None and "not the same history" in other


def test_partial_files_are_removed_and_damaged_snapshots_skipped(tmp_path: Path) -> None:
    snapshot.write(tmp_path, 5, snapshot.dumps({"v": 5}))
    (tmp_path / "snapshot-00000000000000000009.1234.tmp").write_bytes(b"half")
    newest = tmp_path / "snapshot-00000000000000000009.bin"
    newest.write_bytes(snapshot.MAGIC + b"0" * 64 + b" 9 -\ntorn")
    assert snapshot.remove_partial(tmp_path) == 1
    assert snapshot.read_latest(tmp_path) == (5, {"v": 5})
