"""Journal and snapshots must agree at start, and ``riskd audit`` checks the same.

A snapshot names the journal position it covers (record count and chain
hash).  A journal that no longer reaches that position lost acknowledged
records (truncated, restored from an older copy, or its ``-wal`` deleted);
riskd refuses it with exit 3 naming both files instead of replaying from
wherever the journal now ends.  A deleted ``-wal`` after a crash is caught
even without a snapshot beyond it: the ``-shm`` index still counts the
committed frames that went with it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from riskd import config as config_mod
from riskd.audit import audit
from riskd.cli import EXIT_CORRUPT
from riskd.config import load
from riskd.core.events import Deposit, Input
from riskd_client.gateway import Gateway

from ..api.conftest import Daemon, start_daemon
from ..api.scenario import crash_scenario, send
from ..api.test_durability import pure_digest, state, stream_all


def _start(data: Path) -> tuple[Daemon | None, int, str]:
    """Start riskd on ``data``: (the serving daemon, 0, "") or (None, exit status, stderr)."""
    stamp = time.monotonic_ns()
    log, err = data.parent / f"riskd-{stamp}.log", data.parent / f"riskd-{stamp}.err"
    with log.open("wb") as out, err.open("wb") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "riskd.cli", "serve", "--grpc-listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", "--data-dir", str(data)],
            stdout=out, stderr=errors,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"riskd_serving"' in line:
                rec = json.loads(line)
                return Daemon(process, rec["grpc_port"], rec["metrics_port"], log), 0, ""
        if process.poll() is not None:
            return None, process.returncode, err.read_text()
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"riskd neither served nor exited:\n{log.read_text()}")


def _serve(data: Path) -> tuple[int, str]:
    """Start riskd expecting a refusal: (exit status, stderr)."""
    d, code, stderr = _start(data)
    if d is not None:
        d.stop()
        raise AssertionError("riskd started")
    return code, stderr


def _audit_cli(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "riskd.cli", "audit", "--data", str(data)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _records(journal: Path) -> int:
    with sqlite3.connect(journal) as db:
        return int(db.execute("SELECT count(*) FROM journal").fetchone()[0])


def test_a_journal_cut_below_the_snapshot_is_refused_and_fails_the_audit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    journal = data / "journal.sqlite3"
    d = start_daemon(tmp_path)
    asyncio.run(stream_all(d, crash_scenario(), "gw-cut"))
    assert d.stop() == 0  # the final snapshot covers every record
    assert audit(load(), data)[0]
    total = _records(journal)
    (snap,) = data.glob("snapshot-*.bin")
    assert snap.name == f"snapshot-{total:020d}.bin"
    db = sqlite3.connect(journal)  # what an operator restoring an older copy would do
    db.execute("DELETE FROM journal WHERE n > ?", (total - 3,))
    db.commit()
    db.close()
    (data / "journal.head").unlink()  # as a data directory from before it existed

    code, stderr = _serve(data)
    assert code == EXIT_CORRUPT, stderr
    (line,) = stderr.splitlines()
    assert line.startswith("riskd: refusing to start, the journal is inconsistent")
    assert str(snap) in line and str(journal) in line
    assert f"covers {total} journal records" in line and f"holds only {total - 3}" in line

    ok, report = audit(load(), data)
    assert not ok and any(x.startswith("FAIL snapshot") and str(snap) in x for x in report)
    assert _audit_cli(data).returncode == 1


def test_a_journal_from_another_history_is_refused(tmp_path: Path) -> None:
    """Same length, different records: the chain hash at the snapshot tells them apart."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    inputs = crash_scenario()
    for where, scenario in ((ours, inputs), (theirs, [*inputs[:4], *inputs])):
        where.mkdir()
        d = start_daemon(where)
        asyncio.run(stream_all(d, scenario, "gw-other"))
        assert d.stop() == 0
    assert _records(theirs / "data" / "journal.sqlite3") >= _records(
        ours / "data" / "journal.sqlite3"
    )
    for name in ("journal.sqlite3", "journal.head"):  # their head agrees with their journal
        shutil.copy(theirs / "data" / name, ours / "data" / name)

    code, stderr = _serve(ours / "data")
    assert code == EXIT_CORRUPT, stderr
    assert "not the same history" in stderr
    ok, report = audit(load(), ours / "data")
    assert not ok and any("not the same history" in x for x in report), report


def test_a_journal_cut_past_every_snapshot_is_refused_by_its_head_file(tmp_path: Path) -> None:
    """Rows deleted at the tail leave an intact chain, and no snapshot reaches that far:
    only ``journal.head``, rewritten after every commit, knows how far the journal got."""
    data = tmp_path / "data"
    journal = data / "journal.sqlite3"
    d = start_daemon(tmp_path)
    asyncio.run(stream_all(d, crash_scenario(), "gw-head"))
    d.process.send_signal(signal.SIGKILL)  # no final snapshot
    d.process.wait(30)
    total = _records(journal)
    assert (data / "journal.head").read_text().split()[0] == str(total)
    with sqlite3.connect(journal) as db:
        db.execute("DELETE FROM journal WHERE n > ?", (total - 2,))

    code, stderr = _serve(data)
    assert code == EXIT_CORRUPT, stderr
    (line,) = stderr.splitlines()
    assert str(data / "journal.head") in line and str(journal) in line
    assert f"saw {total} records committed" in line and "fewer records" in line
    ok, report = audit(load(), data)
    assert not ok and any("journal.head" in x for x in report), report
    assert _audit_cli(data).returncode == 1


EMPTY = f"snapshot-{0:020d}.bin"  # a snapshot of nothing: the journal it covers is empty


def _deposits(n: int) -> list[Input]:
    t = (time.time_ns() // 1_000_000 - 3_600_000) // 60_000 * 60_000
    return [Deposit(20 + i % 5, "USDT", 1_000 + i, t) for i in range(n)]


def _killed_after_acks(
    tmp_path: Path, *extra: str, snapshot: bool = False
) -> tuple[Daemon, list[Input], int]:
    """Stream deposits, kill -9 once they are acknowledged (and, ``snapshot``, once a
    snapshot covers some of them); (daemon, inputs, acked)."""
    inputs = _deposits(300)
    d = start_daemon(tmp_path, *extra)

    async def stream() -> int:
        async with Gateway(d.target, "gw-wal", epoch=1, batch_size=3) as gw:
            for x in inputs:
                send(gw, x)
            await gw.flush()
            deadline = time.monotonic() + 30
            while snapshot and time.monotonic() < deadline:
                names = {p.name for p in (tmp_path / "data").glob("snapshot-*.bin")}
                if names - {EMPTY}:
                    break
                await asyncio.sleep(0.02)
            d.process.send_signal(signal.SIGKILL)
            return gw.acked_sequence

    acked = asyncio.run(stream())
    d.process.wait(30)
    return d, inputs, acked


def _recovered_or_refused(data: Path, inputs: list[Input], acked: int) -> str:
    """Restart: either exit 3 (its stderr), or every acknowledged update is there ("")."""
    again, code, stderr = _start(data)
    if again is None:
        assert code == EXIT_CORRUPT, stderr
        return stderr
    try:

        async def resumed() -> int:
            async with Gateway(again.target, "gw-wal", epoch=1) as gw:
                return await gw.wait_connected()

        durable = asyncio.run(resumed())
        assert durable >= acked
        assert state(again).digest == pure_digest(inputs[:durable])
    finally:
        assert again.stop() == 0
    return ""


def test_a_deleted_wal_after_kill_9_is_refused_never_a_silent_loss(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _, inputs, acked = _killed_after_acks(tmp_path)
    assert acked == len(inputs)
    wal = data / "journal.sqlite3-wal"
    assert wal.exists()
    wal.unlink()

    refused = _recovered_or_refused(data, inputs, acked)
    # A few hundred commits stay in the WAL (no checkpoint yet): refused, naming the files.
    assert refused, "riskd started without the deleted -wal's records"
    (line,) = refused.splitlines()
    assert "riskd: refusing to start, the journal is inconsistent" in line
    assert str(wal) in line and "committed WAL frames" in line
    ok, report = audit(load(), data)
    assert not ok and any(str(wal) in x for x in report), report


def test_a_deleted_wal_and_shm_below_a_snapshot_is_refused(tmp_path: Path) -> None:
    """The issue's case: a journal shorter than the newest snapshot."""
    data = tmp_path / "data"
    config = tmp_path / "riskd.toml"
    config.write_text(
        config_mod.default_toml().replace("snapshot_seconds = 300", "snapshot_seconds = 0.05")
    )
    _, inputs, acked = _killed_after_acks(tmp_path, "--config", str(config), snapshot=True)
    snaps = sorted(data.glob("snapshot-*.bin"))
    assert snaps and snaps[-1].name != EMPTY and acked == len(inputs)
    for suffix in ("-wal", "-shm"):
        (data / f"journal.sqlite3{suffix}").unlink()

    refused = _recovered_or_refused(data, inputs, acked)
    assert refused, "riskd started below its own snapshot"
    assert str(data / "journal.sqlite3") in refused and "journal.head" in refused
    assert not audit(load(), data)[0]
    # Without the head file (a directory from before it existed) the snapshot still catches it.
    (data / "journal.head").unlink()
    refused = _recovered_or_refused(data, inputs, acked)
    assert str(data / "journal.sqlite3") in refused and "snapshot-" in refused
    assert not audit(load(), data)[0]


def test_a_crash_with_the_wal_in_place_recovers_and_audits(tmp_path: Path) -> None:
    """The checks refuse only what lost records: an ordinary kill -9 restarts."""
    data = tmp_path / "data"
    _, inputs, acked = _killed_after_acks(tmp_path)
    assert _recovered_or_refused(data, inputs, acked) == ""
    ok, report = audit(load(), data)
    assert ok, report
