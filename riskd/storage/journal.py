"""The journal: every sequenced input, durable before it is acknowledged.

``SqliteJournal`` is the embedded default: one SQLite file in the data
directory, WAL mode, ``synchronous=FULL`` (a commit is on disk when it
returns), one transaction per group of records (group commit).  Any error is
fatal to the caller: riskd crashes and recovers from the journal rather than
retrying a write whose outcome it cannot know: a failed write raises
:class:`~riskd.storage.StorageFault` (the journal actor then fail-stops), a
file SQLite cannot read raises :class:`JournalCorrupt`.

Every append carries the writer's ownership epoch, taken when the journal is
opened; an append from a writer whose epoch is no longer current is refused.
That is the contract a replicated backend (PostgreSQL with a synchronous
standby) will keep without any change to the actors.

Records are hash-chained (each row stores SHA-256 of the previous hash and its
record), so ``riskd audit`` can tell whether any byte of history changed,
and a snapshot can name the exact journal position it covers (records and
hash): a restart refuses a journal that no longer reaches it.

Beside the file, ``journal.head`` names the newest position a commit reached
(records and hash), rewritten in place after every commit without an fsync
of its own: it can lag the journal after a power loss, never lead it.  A
journal that no longer reaches it (rows deleted at the tail, or an older copy
of the file restored) is refused, although its own chain is intact.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from riskd.core.hash_chain import GENESIS, chain
from riskd.errors import RiskdError
from riskd.storage.faults import StorageFault

__all__ = [
    "Journal",
    "SqliteJournal",
    "StaleWriter",
    "JournalCorrupt",
    "JournalInconsistent",
    "GENESIS",
    "chain",
    "open_sqlite",
    "wal_problem",
    "head_problem",
]

#: The width of ``journal.head``: always rewritten whole, in place.
_HEAD_BYTES = 96


class StaleWriter(RiskdError):
    """Another process opened the journal after this one: stop writing."""

    STATUS = "UNAVAILABLE"


class JournalCorrupt(RiskdError):
    """The journal cannot be read back: refuse to start rather than guess."""

    STATUS = "DATA_LOSS"


class JournalInconsistent(JournalCorrupt):
    """The journal does not reach what a snapshot or its WAL index says was written."""


# SQLite's primary result codes that mean the bytes are bad, not the disk.
_CORRUPT_CODES = {11, 24, 26}  # SQLITE_CORRUPT, SQLITE_FORMAT, SQLITE_NOTADB


def _fault_or_corrupt(path: Path, e: sqlite3.Error) -> Exception:
    """Bad bytes refuse the start (exit 3); a file that cannot be written is a fault."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        corrupt = code & 0xFF in _CORRUPT_CODES
    else:
        corrupt = not isinstance(e, sqlite3.OperationalError)
    if corrupt:
        return JournalCorrupt(f"{path}: {e}")
    return StorageFault("journal", path, e)


class Journal(Protocol):
    """What the daemon needs of a journal: :class:`SqliteJournal` (one file in
    the data directory) or :class:`riskd.storage.postgres.PostgresJournal`."""

    epoch: int

    @property
    def path(self) -> Path | str:
        """Where it is, for error lines (a file, or a redacted database URL and shard)."""

    @property
    def head(self) -> str:
        """The chain hash after the last record appended."""

    def append(self, records: Sequence[str]) -> None:
        """Make ``records`` durable, in order, atomically; raise on any failure."""

    def replay(self, after: int = 0) -> Iterator[str]:
        """Every record appended after the first ``after``, in order."""

    def hash_at(self, n: int) -> str | None:
        """The chain hash after the first ``n`` records; None if there are fewer."""

    def verify(self) -> tuple[int, str | None]:
        """``(records, None)``, or ``(n, why)`` at the first break of the hash chain."""

    def close(self) -> None: ...


#: Records one ``INSERT`` carries (4 parameters each, under SQLite's 32,766).
_ROWS_PER_INSERT = 256


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int) -> str:
    """``rows`` journal rows in one statement, inserted only while the epoch is ours."""
    values = ",".join(["(?,?,?,?)"] * rows)
    return (
        "INSERT INTO journal (n, epoch, record, hash)"
        f" SELECT column1, column2, column3, column4 FROM (VALUES {values})"
        " WHERE (SELECT epoch FROM owner WHERE id = 0) = ?"
    )


def _head_path(journal: Path) -> Path:
    """``journal.head`` beside ``journal.sqlite3``."""
    return Path(str(journal).removesuffix(".sqlite3") + ".head")


class SqliteJournal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as e:
            raise StorageFault("journal", self.path, e) from e
        except sqlite3.Error as e:
            raise _fault_or_corrupt(self.path, e) from e

    def _open(self) -> None:
        # check_same_thread off: appends run in a worker thread, one at a time.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS journal (n INTEGER PRIMARY KEY,"
            " epoch INTEGER NOT NULL, record TEXT NOT NULL, hash TEXT NOT NULL)"
        )
        last = self._db.execute("SELECT n, hash FROM journal ORDER BY n DESC LIMIT 1").fetchone()
        self._count, self._head = (int(last[0]), str(last[1])) if last else (0, GENESIS)
        self._head_file = _head_path(self.path)
        self._head_fd = -1
        self._db.execute("CREATE TABLE IF NOT EXISTS owner (id INTEGER PRIMARY KEY, epoch INTEGER)")
        self._db.execute("BEGIN IMMEDIATE")
        row = self._db.execute("SELECT epoch FROM owner WHERE id = 0").fetchone()
        self.epoch = (row[0] if row else 0) + 1
        self._db.execute("INSERT OR REPLACE INTO owner (id, epoch) VALUES (0, ?)", (self.epoch,))
        self._db.execute("COMMIT")

    @property
    def head(self) -> str:
        """The chain hash after the last record appended (GENESIS when empty)."""
        return self._head

    def append(self, records: Sequence[str]) -> None:
        """Raises StorageFault when the write failed (its outcome is then unknown).

        Three statements a group, whatever its size (``BEGIN``, one ``INSERT``
        per :data:`_ROWS_PER_INSERT` records, ``COMMIT``), the epoch checked
        inside the ``INSERT``: each statement lets go of the GIL and takes it
        back, and in the daemon that take-back waits for the busy trio thread
        (measured: docs/performance.md, "The engine per message, session 15").
        ``n`` is given explicitly, the value SQLite would give (the newest
        plus one; this writer is the only one).
        """
        db = self._db
        epoch = self.epoch
        head, count = self._head, self._count
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for at in range(0, len(records), _ROWS_PER_INSERT):
                    chunk = records[at : at + _ROWS_PER_INSERT]
                    params: list[object] = []
                    for r in chunk:
                        head = chain(head, r)
                        count += 1
                        params += (count, epoch, r, head)
                    params.append(epoch)
                    cursor = db.execute(_insert_sql(len(chunk)), params)
                    if cursor.rowcount != len(chunk):
                        (current,) = db.execute("SELECT epoch FROM owner WHERE id = 0").fetchone()
                        raise StaleWriter(
                            f"journal owned by epoch {current}, this writer is {epoch}"
                        )
            except BaseException:
                # A failed write may already have rolled the transaction back.
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except StaleWriter as e:
            raise StorageFault("journal", self.path, str(e)) from e
        except (sqlite3.Error, OSError) as e:
            raise StorageFault("journal", self.path, e) from e
        self._head = head
        self._count = count
        self._write_head()

    def _write_head(self) -> None:
        line = f"{self._count} {self._head}\n".encode().ljust(_HEAD_BYTES)
        try:
            if self._head_fd < 0:  # kept open: one write a commit, not three calls
                self._head_fd = os.open(self._head_file, os.O_WRONLY | os.O_CREAT, 0o600)
            os.pwrite(self._head_fd, line, 0)
        except OSError as e:
            raise StorageFault("journal", self._head_file, e) from e

    def hash_at(self, n: int) -> str | None:
        """The chain hash after the first ``n`` records; None if there are fewer."""
        return hash_at(self._db, n)

    def replay(self, after: int = 0) -> Iterator[str]:
        """Records after the first ``after`` ones, in order."""
        try:
            rows = self._db.execute("SELECT record FROM journal WHERE n > ? ORDER BY n", (after,))
            yield from (r for (r,) in rows)
        except sqlite3.DatabaseError as e:
            raise JournalCorrupt(f"{self.path}: {e}") from e

    def verify(self) -> tuple[int, str | None]:
        """Walk the hash chain: ``(records, None)`` or ``(n, why)`` at the first break."""
        head, count = GENESIS, 0
        try:
            for n, record, stored in self._db.execute(
                "SELECT n, record, hash FROM journal ORDER BY n"
            ):
                head = chain(head, record)
                count += 1
                if head != stored:
                    return n, f"record {n}: hash chain broken (the record or its hash changed)"
        except sqlite3.DatabaseError as e:
            return count, f"unreadable: {e}"
        return count, None

    def count(self) -> int:
        (n,) = self._db.execute("SELECT count(*) FROM journal").fetchone()
        return int(n)

    def close(self) -> None:
        if self._head_fd >= 0:
            os.close(self._head_fd)
            self._head_fd = -1
        self._db.close()


def hash_at(db: sqlite3.Connection, n: int) -> str | None:
    """The chain hash after the first ``n`` records of the journal open as ``db``
    (read-only for ``riskd audit`` and the snapshot writer); None if there are fewer."""
    if n == 0:
        return GENESIS
    row = db.execute("SELECT hash FROM journal WHERE n = ?", (n,)).fetchone()
    return None if row is None else str(row[0])


def open_sqlite(data: Path) -> SqliteJournal:
    """The embedded journal of data directory ``data``, refused (JournalInconsistent)
    when its WAL index says committed records are gone."""
    path = data / "journal.sqlite3"
    lost = wal_problem(path)  # before SQLite "recovers" by dropping them
    if lost:
        raise JournalInconsistent(lost)
    journal = SqliteJournal(path)
    behind = head_problem(path, journal.hash_at)
    if behind:
        journal.close()
        raise JournalInconsistent(behind)
    return journal


def head_problem(path: Path, hash_at: Callable[[int], str | None]) -> str | None:
    """Whether the journal at ``path`` falls short of the position ``journal.head``
    saw committed; ``hash_at(n)`` is the journal's chain hash after ``n`` records."""
    head = _head_path(path)
    try:
        text = head.read_bytes().decode("ascii").split()
        records, want = int(text[0]), text[1]
    except FileNotFoundError:
        return None  # a journal written before the head file existed
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None  # torn by a crash mid-rewrite: it only ever lags, so nothing is lost
    have = hash_at(records)
    if have == want:
        return None
    state = "fewer records" if have is None else "another hash there"
    return (
        f"{head} saw {records} records committed (hash {want[:16]}…), but {path} has"
        f" {state}: acknowledged records were lost (rows deleted, or an older copy"
        " restored); restore the data directory from a backup or replica"
    )


def wal_problem(path: Path) -> str | None:
    """Whether committed records are missing from the WAL; call before opening.

    After a crash the ``-shm`` index still says how many WAL frames were
    committed (``mxFrame``) and how many of them were already copied into the
    database file (``nBackfill``).  If the ``-wal`` file is gone or shorter
    than that, acknowledged records were lost with it (a deleted or truncated
    ``-wal``): SQLite itself would silently start from the database file.
    """
    shm, wal = Path(f"{path}-shm"), Path(f"{path}-wal")
    try:
        header = shm.read_bytes()[:100]
    except FileNotFoundError:
        return None  # closed cleanly (SQLite removes both), or never opened
    except OSError as e:
        return f"{shm}: unreadable: {e}"
    if len(header) < 100:
        return None
    # Two copies of WalIndexHdr, native byte order: iVersion, unused, iChange,
    # isInit, bigEndCksum, szPage (65536 stored as 1), mxFrame; then nBackfill
    # at byte 96.  Copies that differ were caught mid-update: trust the lower.
    copies = [struct.unpack("=IIIBBHI", header[at : at + 20]) for at in (0, 48)]
    _, _, _, is_init, _, page, _ = copies[0]
    frames = min(c[6] for c in copies)
    (backfilled,) = struct.unpack("=I", header[96:100])
    if not is_init or frames <= backfilled:
        return None
    page = 65536 if page == 1 else page
    needed = 32 + frames * (page + 24)
    try:
        size = wal.stat().st_size
    except FileNotFoundError:
        size = -1
    if size >= needed:
        return None
    state = "missing" if size < 0 else f"only {size} bytes"
    return (
        f"{wal} is {state}, but {shm} records {frames - backfilled} committed WAL frames"
        f" not yet in {path}: acknowledged records were lost (a deleted or truncated -wal);"
        " restore the data directory from a backup or replica"
    )
