"""Snapshots written by a separate writer process that replays the journal (no fork())."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from riskd.config import default_toml, load
from riskd.core import Engine
from riskd.core.invariants import digest
from riskd.storage import StorageFault, snapshot

from ..api.conftest import start_daemon
from ..api.scenario import crash_scenario
from ..api.test_durability import pure_digest, stream_all


def _position(data: Path) -> tuple[int, str]:
    db = sqlite3.connect(f"file:{data / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        n, head = db.execute("SELECT n, hash FROM journal ORDER BY n DESC LIMIT 1").fetchone()
    finally:
        db.close()
    return int(n), str(head)


def _killed_after(tmp_path: Path, inputs: list[Any], *extra: str) -> None:
    d = start_daemon(tmp_path, *extra)
    asyncio.run(stream_all(d, inputs, "gw-snap"))
    d.process.send_signal(signal.SIGKILL)  # no shutdown snapshot: the journal only
    d.process.wait(10)


def _digest_of(state: dict[str, Any]) -> str:
    return digest(Engine.view(state["markets"], state["wallets"], state["funds"]))


def test_the_writer_rebuilds_the_state_at_the_journal_position(tmp_path: Path) -> None:
    inputs = crash_scenario()
    data = tmp_path / "data"
    _killed_after(tmp_path, inputs[:9])
    n, head = _position(data)
    assert snapshot.wait_writer(snapshot.start_writer(load(), data, n, head))
    snap = snapshot.load_latest(data)
    assert snap is not None and (snap.records, snap.journal_hash) == (n, head)
    assert _digest_of(snap.state) == pure_digest(inputs[:9])
    # The next one starts from that snapshot and replays only the journal after it.
    _killed_after(tmp_path, inputs)
    n2, head2 = _position(data)
    assert n2 > n
    assert snapshot.wait_writer(snapshot.start_writer(load(), data, n2, head2))
    snap2 = snapshot.load_latest(data)
    assert snap2 is not None and snap2.records == n2
    assert _digest_of(snap2.state) == pure_digest(inputs)


def test_a_writer_whose_journal_does_not_reach_the_position_writes_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    _killed_after(tmp_path, crash_scenario()[:5])
    n, head = _position(data)
    assert not snapshot.wait_writer(snapshot.start_writer(load(), data, n, "ab" * 32))
    assert not snapshot.wait_writer(snapshot.start_writer(load(), data, n + 5, head))
    assert snapshot.load_latest(data) is None


def test_a_writer_that_cannot_write_reports_the_cause_as_a_storage_fault(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _killed_after(tmp_path, crash_scenario()[:5])
    n, head = _position(data)
    # Where the snapshot would go is a directory: the rename fails.
    (data / f"snapshot-{n:020d}.bin" / "x").mkdir(parents=True)
    with pytest.raises(StorageFault) as fault:
        snapshot.wait_writer(snapshot.start_writer(load(), data, n, head))
    assert fault.value.what == "snapshot" and "directory" in str(fault.value).lower()
    assert not list(data.glob("snapshot-*.tmp"))


def test_a_daemon_snapshots_without_forking_and_restarts_from_it(tmp_path: Path) -> None:
    config = tmp_path / "riskd.toml"
    config.write_text(default_toml().replace("snapshot_seconds = 300", "snapshot_seconds = 0.1"))
    inputs = crash_scenario()
    d = start_daemon(tmp_path, "--config", str(config))
    try:
        asyncio.run(stream_all(d, inputs, "gw-writer"))
        deadline = time.monotonic() + 60
        written: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            lines = [json.loads(x) for x in d.log.read_text().splitlines() if x.startswith("{")]
            written = [x for x in lines if x.get("event") == "snapshot_written"]
            n, _ = _position(tmp_path / "data")
            if any(x["records"] == n for x in written):
                break
            time.sleep(0.1)
        assert written and written[-1]["writer"] == "process"
        assert all(x["paused_ms"] < 1000 for x in written)
    finally:
        d.process.send_signal(signal.SIGKILL)
        d.process.wait(10)
    log = d.log.read_text()
    assert "fork()" not in log, log  # gRPC's "skipping fork() handlers" never appears
    again = start_daemon(tmp_path, "--config", str(config))
    try:
        rec = next(
            json.loads(x) for x in again.log.read_text().splitlines() if "riskd_recovered" in x
        )
        assert rec["snapshot_records"] > 0
    finally:
        assert again.stop() == 0


def test_the_writer_is_a_fresh_interpreter_that_reports_only_through_its_exit(
    tmp_path: Path,
) -> None:
    fake = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('No space left on device (ENOSPC)',"
         " file=sys.stderr); sys.exit(4)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    with pytest.raises(StorageFault) as fault:
        snapshot.wait_writer(snapshot.Writer(fake, tmp_path, 1))
    assert "ENOSPC" in str(fault.value)
    other = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"], stderr=subprocess.PIPE)
    assert not snapshot.wait_writer(snapshot.Writer(other, tmp_path, 1))
    assert not snapshot.wait_writer(snapshot.Writer(None, tmp_path, 1))  # never started


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


def test_format_v3_is_still_read_and_upto_skips_newer_snapshots(tmp_path: Path) -> None:
    import hashlib

    payload = snapshot.dumps({"v": 3})
    header = f"{hashlib.sha256(payload).hexdigest()} 3 -\n".encode()
    (tmp_path / f"snapshot-{3:020d}.bin").write_bytes(b"riskd-snapshot-v3\n" + header + payload)
    snapshot.write(tmp_path, 8, snapshot.dumps({"v": 8}))
    assert snapshot.read_latest(tmp_path) == (8, {"v": 8})
    older = snapshot.load_latest(tmp_path, upto=7)
    assert older is not None and (older.records, older.state) == (3, {"v": 3})


def test_partial_files_are_removed_and_damaged_snapshots_skipped(tmp_path: Path) -> None:
    snapshot.write(tmp_path, 5, snapshot.dumps({"v": 5}))
    (tmp_path / "snapshot-00000000000000000009.1234.tmp").write_bytes(b"half")
    newest = tmp_path / "snapshot-00000000000000000009.bin"
    newest.write_bytes(snapshot.MAGIC + b"0" * 64 + b" 9 -\ntorn")
    assert snapshot.remove_partial(tmp_path) == 1
    assert snapshot.read_latest(tmp_path) == (5, {"v": 5})


def test_a_snapshot_of_an_unknown_version_is_skipped_like_a_damaged_one(tmp_path: Path) -> None:
    snapshot.write(tmp_path, 5, snapshot.dumps({"v": 5}))
    newer = tmp_path / f"snapshot-{9:020d}.bin"
    newer.write_bytes(b"riskd-snapshot-v99\n" + b"0" * 64 + b" 9 -\nwhatever")
    assert snapshot.read_latest(tmp_path) == (5, {"v": 5})
    newer.write_bytes(b"riskd-snapshot-v2\nold")
    assert snapshot.read_latest(tmp_path) == (5, {"v": 5})
