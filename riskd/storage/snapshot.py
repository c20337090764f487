"""Snapshots: the whole engine state at one point of the journal, on disk.

A snapshot records how many journal records it covers; a restart loads the
newest valid snapshot and replays only the journal after it.  Snapshots are
an optimisation: the journal is never truncated, so a missing or damaged
snapshot only makes the restart slower, never wrong.

Taken without stopping the engine and without ``fork()``: the daemon settles
its actors, reads the journal's durable position (records, chain hash) and
starts a writer process (:func:`start_writer`: ``subprocess``, i.e. exec of
a fresh interpreter, nothing of the threaded daemon is duplicated).  The
writer builds the same actors, loads the newest snapshot, replays the
journal from there up to that position (read-only) and writes the state it
reaches: since the engine is deterministic, that is the daemon's state at
that position.  The engine pauses only while its mailboxes settle.  (Before:
a fork of the threaded process, whose child pickled the state, which POSIX
does not allow after fork in a multithreaded process and gRPC warned about;
before that, pickling in place, 3–5 s at 10^6 positions.)  At shutdown,
with nothing left to serve, the state is pickled in process
(:func:`write`).  The fund ledgers are not in snapshots any more, only their
newest entries and chain head (:mod:`riskd.storage.ledger`).

Written atomically (temporary file, fsync, rename, fsync of the directory)
with a SHA-256 of the payload in the header, checked on load.  The header
also names the journal position the state covers: the record count and the
journal's chain hash after that record.  A restart checks that the journal
still holds that record with that hash (:func:`mismatch`): a journal cut
below a snapshot lost acknowledged records, and is refused rather than
silently replayed from where it now ends.

A snapshot that cannot be written (disk full, read-only, ``ulimit -f``) is a
storage fault like a failed journal write: :func:`wait_writer` raises
:class:`~riskd.storage.StorageFault` with the writer's reason, and the daemon
fail-stops (exit 4).  A writer that failed otherwise (killed, a bug) only
costs restart time.  The payload is a pickle of the core's own objects: a
snapshot is read only by riskd, from a directory only riskd may write.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from riskd import heap
from riskd.storage.faults import StorageFault, describe

__all__ = [
    "Snapshot",
    "Writer",
    "dumps",
    "write",
    "install",
    "path_of",
    "probe",
    "start_writer",
    "wait_writer",
    "load_latest",
    "latest_position",
    "read_latest",
    "mismatch",
    "remove_partial",
    "MAGIC",
    "FORMAT",
]

# v2: market engines and wallets carry the trade and deposit ids they remember.
# v3: the header names the journal position (records, chain hash) covered.
# v4: a fund's ledger is a riskd.core.ledger.Ledger holding its newest entries
#     (the rest in ledger.sqlite3); a v3 snapshot's funds carry every entry as
#     a list and are still read (riskd.storage.ledger.agree writes them out).
# v5: a market's liquidations, their index and ADL queue are a
#     riskd.core.LiquidationMachine; v3 and v4 markets are moved over on load
#     (MarketEngine.__setstate__), and an older riskd skips a v5 snapshot.
# v6: the state counts the events published so far ("events"; events.sqlite3
#     holds them); a v5 one is read with numbering starting again at 1.
# A snapshot of another version (older or newer) is skipped like a damaged
# one: the journal rebuilds the state, and the journal's own format version
# decides whether this riskd may read the directory at all.
FORMAT = 6
MAGIC = b"riskd-snapshot-v%d\n" % FORMAT
_READABLE = (MAGIC, b"riskd-snapshot-v5\n", b"riskd-snapshot-v4\n", b"riskd-snapshot-v3\n")
KEEP = 2
#: Exit status of a writer whose write failed (its reason on its stderr).
WRITE_FAILED = 4


@dataclass(frozen=True, slots=True)
class Snapshot:
    path: Path
    records: int  # journal records the state covers
    journal_hash: str  # the journal's chain hash after the last of them
    state: dict[str, Any]  # empty from latest_position()


def _name(records: int) -> str:
    return f"snapshot-{records:020d}.bin"


def path_of(directory: Path, records: int) -> Path:
    """Where the snapshot of journal position ``records`` is written in ``directory``."""
    return directory / _name(records)


def dumps(state: dict[str, Any]) -> bytes:
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def write(directory: Path, records: int, payload: bytes, journal_hash: str = "") -> Path:
    """Write a pickled state covering the first ``records`` journal records.

    ``journal_hash``: the journal's chain hash after record ``records`` (""
    when unknown, as in tools that write a snapshot without a journal).
    """
    header = f"{hashlib.sha256(payload).hexdigest()} {records} {journal_hash or '-'}\n"
    final = install(directory, records, MAGIC + header.encode(), payload)
    for old in sorted(directory.glob("snapshot-*.bin"))[:-KEEP]:
        old.unlink(missing_ok=True)  # another writer (an orphaned one) may prune too
    return final


def install(directory: Path, records: int, *parts: bytes) -> Path:
    """Put the snapshot file of position ``records``, made of ``parts``, in place
    atomically: temporary file, fsync, rename, fsync of the directory.

    Also used for a whole file fetched from elsewhere (``riskd.storage.postgres``),
    checked on load like any other.  Raises ``OSError``.
    """
    final = directory / _name(records)
    tmp = final.with_suffix(f".{os.getpid()}.tmp")  # two writers never share one
    try:
        with tmp.open("wb") as f:
            for part in parts:  # not joined: the payload may be hundreds of MB
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError:
        tmp.unlink(missing_ok=True)  # on a full disk, a partial file only holds space
        raise
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


def probe(directory: Path) -> None:
    """Check that ``directory`` still takes a snapshot file (when there is nothing
    new to write): a disk gone read-only or full surfaces at the snapshot timer
    even on an idle daemon.  Raises :class:`StorageFault`."""
    path = directory / f"snapshot-probe.{os.getpid()}.tmp"
    try:
        with path.open("wb") as f:
            f.write(b"probe")
            os.fsync(f.fileno())
        path.unlink()
    except OSError as e:
        path.unlink(missing_ok=True)
        raise StorageFault("snapshot", directory, describe(e, directory)) from e


@dataclass(slots=True)
class Writer:
    """A snapshot writer process (:func:`start_writer`)."""

    process: subprocess.Popen[bytes] | None
    directory: Path
    records: int


def start_writer(
    config: Any,
    directory: Path,
    records: int,
    journal_hash: str,
    store: tuple[str, str, int] | None = None,
) -> Writer:
    """Start a process that writes the state at journal position ``records``.

    ``config``: the daemon's :class:`~riskd.config.Config` (the writer builds
    the same markets and funds).  The process
    (:mod:`riskd.storage.snapshot_writer`) is a fresh interpreter, started
    with ``subprocess`` (vfork + exec: no Python code runs in a copy of the
    threaded daemon).  It reads the journal up to ``records`` and checks it
    ends with ``journal_hash``.  ``store``: ``(database URL, shard, epoch)``
    when the journal is in PostgreSQL: the writer reads it there and stores
    the snapshot there too, under the daemon's epoch (fenced like its appends).
    Wait for it with :func:`wait_writer`; a writer that could not be started
    is reported there as a failure.
    """
    # On stdin, not the command line: the database URL may hold a password.
    job = pickle.dumps((config, str(directory), records, journal_hash, store))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "riskd.storage.snapshot_writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
    except OSError:  # no memory or process slot: no snapshot this time, not a crash
        return Writer(None, directory, records)
    assert proc.stdin is not None
    try:
        proc.stdin.write(job)
        proc.stdin.close()
    except OSError:
        pass  # it died already: wait_writer says why
    return Writer(proc, directory, records)


def wait_writer(w: Writer) -> bool:
    """Block until the writer ends; whether it wrote its snapshot.

    Raises :class:`StorageFault` when it could not write the file: that is
    the disk failing, not the snapshot.
    """
    if w.process is None:
        return False
    assert w.process.stderr is not None
    reason = w.process.stderr.read()
    code = w.process.wait()
    w.process.stderr.close()
    if code == WRITE_FAILED:
        lines = reason.decode(errors="replace").strip().splitlines()
        raise StorageFault("snapshot", w.directory, lines[-1] if lines else "write failed")
    return code == 0


def remove_partial(directory: Path) -> int:
    """Delete temporary files of writers that died mid-write (call before any
    writer starts); how many there were."""
    partial = list(directory.glob("snapshot-*.tmp"))
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def _verified(
    directory: Path, unpickle: bool, upto: int | None = None, settle: bool = False
) -> Snapshot | None:
    for path in sorted(directory.glob("snapshot-*.bin"), reverse=True):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # pruned meanwhile by a writer still finishing (a crashed daemon's)
        except OSError:
            continue  # unreadable (not a file, no permission): like a damaged one
        header, _, payload = data[len(MAGIC) :].partition(b"\n")
        fields = header.split(b" ")
        if (
            not data.startswith(_READABLE)
            or len(fields) != 3
            or hashlib.sha256(payload).hexdigest().encode() != fields[0]
        ):
            continue  # torn or damaged: an older one (or the journal alone) will do
        records = int(path.stem.split("-")[1])
        if int(fields[1]) != records:
            continue  # renamed by hand: its name is not where its state sits
        if upto is not None and records > upto:
            continue
        state: dict[str, Any] = {}
        if unpickle:
            with heap.bulk_load(settle):  # else the collector re-walks it thousands of times
                state = pickle.loads(payload)
        journal_hash = fields[2].decode()
        return Snapshot(path, records, "" if journal_hash == "-" else journal_hash, state)
    return None


def load_latest(
    directory: Path, upto: int | None = None, *, settle: bool = False
) -> Snapshot | None:
    """The newest snapshot that verifies (and covers at most ``upto`` records).

    ``settle``: the process keeps this state for its life (the daemon, the
    writer): freeze it out of the collector's walks as loaded
    (:func:`riskd.heap.bulk_load`).
    """
    return _verified(directory, unpickle=True, upto=upto, settle=settle)


def latest_position(directory: Path) -> Snapshot | None:
    """The newest snapshot that verifies, without its state (for ``riskd audit``)."""
    return _verified(directory, unpickle=False)


def read_latest(directory: Path) -> tuple[int, dict[str, Any]] | None:
    """The newest snapshot that verifies, as ``(records covered, state)``."""
    snap = load_latest(directory)
    return None if snap is None else (snap.records, snap.state)


def mismatch(snap: Snapshot, journal: Path | str, records: int, hash_at: str | None) -> str | None:
    """Why ``snap`` and the journal disagree, naming both files; None if they agree.

    ``records``: how many records the journal holds; ``hash_at``: its chain
    hash after record ``snap.records`` (None when it has fewer).
    """
    if snap.records > records or hash_at is None:
        return (
            f"{snap.path} covers {snap.records} journal records but {journal} holds only"
            f" {records}: acknowledged records are missing from the journal (truncated, or"
            " its -wal deleted); restore the data directory from a backup or replica"
        )
    if snap.journal_hash and snap.journal_hash != hash_at:
        return (
            f"{snap.path} was taken at journal record {snap.records} with chain hash"
            f" {snap.journal_hash[:16]}…, but {journal} has {hash_at[:16]}… there: they are"
            " not the same history (a journal from another data directory?)"
        )
    return None
