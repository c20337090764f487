"""The journal: every sequenced input, durable before it is acknowledged.

``SqliteJournal`` is the embedded default: one SQLite file in the data
directory, WAL mode, ``synchronous=FULL`` (a commit is on disk when it
returns), one transaction per group of records (group commit).  Any error is
fatal to the caller: riskd crashes and recovers from the journal rather than
retrying a write whose outcome it cannot know.

Every append carries the writer's ownership epoch, taken when the journal is
opened; an append from a writer whose epoch is no longer current is refused.
That is the contract a replicated backend (PostgreSQL with a synchronous
standby) will keep without any change to the actors.

Records are hash-chained (each row stores SHA-256 of the previous hash and its
record), so ``riskd audit`` can tell whether any byte of history changed.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

__all__ = ["Journal", "SqliteJournal", "StaleWriter", "JournalCorrupt", "chain"]


class StaleWriter(Exception):
    """Another process opened the journal after this one: stop writing."""


class JournalCorrupt(Exception):
    """The journal cannot be read back: refuse to start rather than guess."""


class Journal(Protocol):
    epoch: int

    def append(self, records: Sequence[str]) -> None:
        """Make ``records`` durable, in order, atomically; raise on any failure."""

    def replay(self, after: int = 0) -> Iterator[str]:
        """Every record appended after the first ``after``, in order."""

    def close(self) -> None: ...


GENESIS = "0" * 64


def chain(prev: str, record: str) -> str:
    """Each record's hash covers the one before: any changed byte breaks the chain."""
    return hashlib.sha256(f"{prev}|{record}".encode()).hexdigest()


class SqliteJournal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open()
        except sqlite3.DatabaseError as e:
            raise JournalCorrupt(f"{self.path}: {e}") from e

    def _open(self) -> None:
        # check_same_thread off: appends run in a worker thread, one at a time.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS journal (n INTEGER PRIMARY KEY,"
            " epoch INTEGER NOT NULL, record TEXT NOT NULL, hash TEXT NOT NULL)"
        )
        last = self._db.execute("SELECT hash FROM journal ORDER BY n DESC LIMIT 1").fetchone()
        self._head = last[0] if last else GENESIS
        self._db.execute("CREATE TABLE IF NOT EXISTS owner (id INTEGER PRIMARY KEY, epoch INTEGER)")
        self._db.execute("BEGIN IMMEDIATE")
        row = self._db.execute("SELECT epoch FROM owner WHERE id = 0").fetchone()
        self.epoch = (row[0] if row else 0) + 1
        self._db.execute("INSERT OR REPLACE INTO owner (id, epoch) VALUES (0, ?)", (self.epoch,))
        self._db.execute("COMMIT")

    def append(self, records: Sequence[str]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            (current,) = db.execute("SELECT epoch FROM owner WHERE id = 0").fetchone()
            if current != self.epoch:
                raise StaleWriter(f"journal owned by epoch {current}, this writer is {self.epoch}")
            head = self._head
            rows = []
            for r in records:
                head = chain(head, r)
                rows.append((self.epoch, r, head))
            db.executemany("INSERT INTO journal (epoch, record, hash) VALUES (?, ?, ?)", rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._head = head

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
        self._db.close()
