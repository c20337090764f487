"""Snapshots written by a forked child: the state as it was at the fork."""

from __future__ import annotations

from pathlib import Path

from riskd.storage import snapshot


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


def test_a_child_that_cannot_write_reports_failure(tmp_path: Path) -> None:
    missing = tmp_path / "not-a-directory"
    pid = snapshot.write_in_child(missing, 1, {"x": 1})
    assert not snapshot.wait_child(pid)
    assert snapshot.read_latest(tmp_path) is None


def test_partial_files_are_removed_and_damaged_snapshots_skipped(tmp_path: Path) -> None:
    snapshot.write(tmp_path, 5, snapshot.dumps({"v": 5}))
    (tmp_path / "snapshot-00000000000000000009.1234.tmp").write_bytes(b"half")
    newest = tmp_path / "snapshot-00000000000000000009.bin"
    newest.write_bytes(snapshot.MAGIC + b"0" * 64 + b"\ntorn")
    assert snapshot.remove_partial(tmp_path) == 1
    assert snapshot.read_latest(tmp_path) == (5, {"v": 5})
