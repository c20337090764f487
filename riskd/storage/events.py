"""Published events on disk: ``events.sqlite3`` in the data directory.

Event numbers are a function of the journal: the engine numbers each published
effect as it is produced, inputs are applied in journal order, and a fund's
flows are published while the market that caused them waits
(:mod:`riskd.actors.market`).  The count so far is part of the state and of
every snapshot (``events``).  So the file, like ``ledger.sqlite3``, is derived
data that needs to be durable only up to the newest snapshot: the daemon calls
:meth:`EventWriter.sync` before a snapshot is written, and at start
:func:`cut` removes what the snapshot does not cover; replaying the journal
after it numbers the same events again.

:class:`EventWriter` is a trio task behind a bounded channel that writes
whatever is waiting in one transaction in a worker thread (group commit) and
keeps the newest ``retention`` events.  A write that fails is a storage fault:
fail-stop, exit 4 (:mod:`riskd.storage.faults`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from riskd.storage.faults import StorageFault, fail_stop
from riskd.storage.group import GroupWriter, Marker

__all__ = ["FILE", "EventRow", "EventStore", "EventWriter", "read_range", "cut"]

FILE = "events.sqlite3"
#: Groups of events the writer's channel holds before the sequencer waits.
CAPACITY = 256

#: (sequence, market, the encoded riskd.v1.Event)
EventRow = tuple[int, str, bytes]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    sequence INTEGER PRIMARY KEY,
    market TEXT NOT NULL,
    event BLOB NOT NULL
);
"""


class EventStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StorageFault("events", path, e) from e

    def write(self, rows: Sequence[EventRow], retention: int, full: bool) -> None:
        try:
            if full:
                self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("BEGIN")
            if rows:
                # REPLACE: a replay after a crash writes numbers the file may still hold.
                self.db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?)", rows)
                oldest = rows[-1][0] - retention
                self.db.execute("DELETE FROM events WHERE sequence <= ?", (oldest,))
            self.db.execute("COMMIT")
            if full:
                self.db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as e:
            raise StorageFault("events", self.path, e) from e

    def bounds(self) -> tuple[int, int]:
        """(oldest, newest) sequence held; (0, 0) when empty."""
        row = self.db.execute("SELECT MIN(sequence), MAX(sequence) FROM events").fetchone()
        return (0, 0) if row[0] is None else (int(row[0]), int(row[1]))

    def event(self, sequence: int) -> bytes | None:
        row = self.db.execute("SELECT event FROM events WHERE sequence = ?", (sequence,)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self.db.close()


def cut(store: EventStore, count: int) -> int:
    """Keep only events 1..``count`` (what a snapshot covers); the oldest kept
    sequence afterwards (``count + 1`` when none is).

    A file that does not reach ``count`` (deleted, or from before events were
    kept on disk) is emptied: the events before the snapshot are gone, and a
    subscriber asking for them gets OUT_OF_RANGE rather than a gap."""
    try:
        store.db.execute("DELETE FROM events WHERE sequence > ?", (count,))
        oldest, newest = store.bounds()
        if newest != count:
            store.db.execute("DELETE FROM events")
            return count + 1
    except sqlite3.Error as e:
        raise StorageFault("events", store.path, e) from e
    return oldest if oldest else count + 1


def read_range(path: Path, start: int, end: int) -> list[EventRow]:
    """Events ``start`` .. ``end - 1`` as written so far, read-only."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT sequence, market, event FROM events WHERE sequence >= ? AND sequence < ?"
            " ORDER BY sequence",
            (start, end),
        ).fetchall()
    finally:
        db.close()
    return [(int(s), str(m), bytes(b)) for s, m, b in rows]


class EventWriter(GroupWriter[list[EventRow]]):
    """Writes numbered events to :class:`EventStore` off the engine's path."""

    def __init__(
        self,
        path: Path,
        retention: int,
        capacity: int = CAPACITY,
        on_fault: Callable[[StorageFault], object] = fail_stop,
    ) -> None:
        super().__init__(capacity, on_fault)
        self.path = path
        self.retention = retention
        self.store: EventStore | None = None

    def open(self) -> EventStore:
        if self.store is None:
            self.store = EventStore(self.path)
        return self.store

    async def submit(self, rows: list[EventRow]) -> None:
        await self._put(rows)

    async def sync(self) -> None:
        """Return once everything submitted before is on disk (fsync'd)."""
        await self._sync(Marker())

    def _write(self, items: list[list[EventRow]], syncs: list[Marker]) -> None:
        self.open().write([r for rows in items for r in rows], self.retention, bool(syncs))
