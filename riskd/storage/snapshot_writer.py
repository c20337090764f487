"""The snapshot writer process: ``python -m riskd.storage.snapshot_writer``.

Started by the daemon (:func:`riskd.storage.snapshot.start_writer`) with a
pickled job on stdin: the daemon's config, the data directory, and the
journal position to write (records, chain hash).  It builds the daemon's
actors (without gRPC, events or the ledger file), loads the newest snapshot
at or below that position, replays the journal from there up to it, read-only
(checking each record's chain hash, and that the last one is the position's),
and writes the state it reaches as the snapshot of that position.  The
engine is deterministic, so that is the daemon's own state there.

Exit status: 0 written; 4 the file could not be written (the reason is the
last line on stderr: a storage fault for the daemon); 1 anything else (the
daemon logs it and goes on: the journal has everything).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

from riskd.storage import snapshot
from riskd.storage.faults import StorageFault, describe
from riskd.storage.journal import GENESIS, chain, hash_at
from riskd.storage.postgres import PostgresJournal, push_snapshot

__all__ = ["rebuild", "main"]


class _Mismatch(Exception):
    pass


def _chained(
    where: object, rows: Iterable[tuple[int, str, str]], after: int, head: str
) -> tuple[list[str], str]:
    out: list[str] = []
    for n, record, stored in rows:
        head = chain(head, record)
        if head != stored or n != after + len(out) + 1:
            raise _Mismatch(f"{where}: record {n} does not chain")
        out.append(record)
    return out, head


def _records(
    data: Path, after: int, upto: int, head: str | None, journal: PostgresJournal | None
) -> tuple[list[str], str]:
    """Journal records ``after+1..upto`` and the chain hash after the last, checked
    (from ``journal`` when the daemon's journal is in PostgreSQL)."""
    if journal is not None:
        if head is None:
            head = journal.hash_at(after)
            if head is None:
                raise _Mismatch(f"{journal.path} has no record {after}")
        return _chained(journal.path, journal.rows(after, upto), after, head)
    path = data / "journal.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if head is None:
            head = hash_at(db, after)
            if head is None:
                raise _Mismatch(f"{path} has no record {after}")
        rows = db.execute(
            "SELECT n, record, hash FROM journal WHERE n > ? AND n <= ? ORDER BY n", (after, upto)
        )
        return _chained(path, rows, after, head)
    finally:
        db.close()


async def rebuild(
    config: Any,
    data: Path,
    records: int,
    journal_hash: str,
    journal: PostgresJournal | None = None,
) -> dict[str, Any]:
    """The daemon's state after the first ``records`` journal records."""
    from riskd.daemon import Daemon  # here: the daemon imports this package

    class Quiet(Daemon):
        keep_events = False  # counted (part of the state), never kept
        writes_ledger = False  # the daemon writes the ledger file; this process only reads

        def observe(self, effects: list[Any]) -> None:
            """Nothing leaves this process: no metrics, logs or events."""

    d = Quiet(config)
    for fund in d.funds.values():
        fund.writer = None  # the daemon writes the ledger file; this process only reads
    snap = snapshot.load_latest(data, upto=records, settle=True)
    covered = 0 if snap is None else snap.records
    known = None if snap is None or not snap.journal_hash else snap.journal_hash
    texts, head = _records(data, covered, records, GENESIS if covered == 0 else known, journal)
    if covered + len(texts) != records or (journal_hash and head != journal_hash):
        raise _Mismatch(f"the journal does not reach record {records} with the daemon's hash")
    async with trio.open_nursery() as nursery:
        d.nursery = nursery  # markets added at runtime (AddMarket) start here too
        for actor in d.actors():
            await nursery.start(actor.run)
        if snap is not None:
            d.sequencer.restore(snap.state)
            await d.sequencer.call(d.sequencer.adopt_restored)
        for text in texts:
            await d.sequencer.call(d.sequencer.replay, text)
        state: dict[str, Any] = await d.sequencer.call(d.sequencer.barrier, d.sequencer.state)
        nursery.cancel_scope.cancel()
    return state


#: The writer's niceness: where the machine has no core to spare, the daemon's
#: threads (answering gateways) run first, and the snapshot, which only saves
#: restart time, takes longer.
NICE = 10


def main() -> int:
    with contextlib.suppress(OSError):  # not allowed here: the daemon's priority, as before
        os.nice(NICE)
    config, directory, records, journal_hash, store = pickle.load(sys.stdin.buffer)
    data = Path(directory)
    journal: PostgresJournal | None = None
    try:
        if store is not None:
            dsn, shard, epoch = store
            journal = PostgresJournal(dsn, shard, epoch, join=True)
        state = trio.run(rebuild, config, data, records, journal_hash, journal)
        payload = snapshot.dumps(state)
    except StorageFault as e:  # the database refused (a newer owner) or is gone
        print(str(e), file=sys.stderr)
        return snapshot.WRITE_FAILED
    except Exception as e:  # a bug or a journal that moved: the daemon logs it, goes on
        print(f"snapshot writer: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    try:
        snapshot.write(data, records, payload, journal_hash)
        if journal is not None:
            push_snapshot(
                journal, data, records, journal_hash, state, config.server.event_retention
            )
    except OSError as e:
        print(describe(e, data), file=sys.stderr)
        return snapshot.WRITE_FAILED
    except StorageFault as e:
        print(str(e), file=sys.stderr)
        return snapshot.WRITE_FAILED
    finally:
        if journal is not None:
            journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
