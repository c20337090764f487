"""The journal and snapshots in PostgreSQL: ``riskd serve --storage postgresql://...``.

The same contract as :class:`~riskd.storage.journal.SqliteJournal` (records
hash-chained, appended in groups, one transaction per group, durable when the
commit returns), kept in a PostgreSQL database that other riskd nodes reach,
so that another node can take a shard over from a dead one
(``docs/cluster.md``).  Durability is PostgreSQL's: ``synchronous_commit=on``
with a synchronous standby (``synchronous_standby_names``) makes a commit
durable on two hosts before riskd acknowledges.

One database holds any number of shards (a shard: the journal of one riskd
process, i.e. the settlement assets of its config), each its own rows.

**Fencing.**  ``riskd_owner`` holds each shard's current ownership epoch.  A
writer takes the epoch when it opens the journal: either one above the
current (a single node, as SQLite does) or the one it was given (in a cluster:
the revision of its etcd owner key, which only grows).  Every append checks,
in the same transaction and under ``FOR SHARE`` on the owner row, that the
epoch is still its own.  A new owner's ``UPDATE`` of the epoch waits for an
append in flight to commit, and every later append of the old writer sees
the new epoch and is refused: a paused or partitioned former owner can never
write after a new owner opened the journal.  A refused append is a storage
fault like any failed write (fail-stop, exit 4).

**A commit whose outcome is unknown** (the connection dropped during COMMIT,
or PostgreSQL's "canceling wait for synchronous replication" warning: the
row committed locally, possibly not on the standby) is a storage fault too:
riskd stops and the next owner reads back what is really there.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from riskd.core.events import FundKind
from riskd.core.insurance_fund import LedgerEntry
from riskd.storage import events as event_files
from riskd.storage import ledger as ledger_files
from riskd.storage import snapshot
from riskd.storage.events import EventRow
from riskd.storage.faults import StorageFault, describe
from riskd.storage.journal import GENESIS, JournalCorrupt, StaleWriter, chain

__all__ = [
    "PostgresJournal",
    "connect",
    "opener",
    "pull_events",
    "pull_ledger",
    "pull_reports",
    "pull_snapshot",
    "push_snapshot",
    "redact",
]

#: Records read per round trip when replaying.
PAGE = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS riskd_owner (
    shard text PRIMARY KEY,
    epoch bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS riskd_journal (
    shard text NOT NULL,
    n bigint NOT NULL,
    epoch bigint NOT NULL,
    record text NOT NULL,
    hash text NOT NULL,
    PRIMARY KEY (shard, n)
);
CREATE TABLE IF NOT EXISTS riskd_snapshot (
    shard text NOT NULL,
    records bigint NOT NULL,
    hash text NOT NULL,
    file bytea NOT NULL,
    PRIMARY KEY (shard, records)
);
CREATE TABLE IF NOT EXISTS riskd_ledger (
    shard text NOT NULL,
    asset text NOT NULL,
    sequence bigint NOT NULL,
    ts bigint NOT NULL,
    kind text NOT NULL,
    market text NOT NULL,
    cause text NOT NULL,
    amount numeric NOT NULL,
    balance_after numeric NOT NULL,
    prev text NOT NULL,
    hash text NOT NULL,
    PRIMARY KEY (shard, asset, sequence)
);
CREATE TABLE IF NOT EXISTS riskd_report (
    shard text NOT NULL,
    asset text NOT NULL,
    day bigint NOT NULL,
    records bigint NOT NULL,
    report text NOT NULL,
    PRIMARY KEY (shard, asset, day)
);
CREATE TABLE IF NOT EXISTS riskd_event (
    shard text NOT NULL,
    sequence bigint NOT NULL,
    market text NOT NULL,
    event bytea NOT NULL,
    PRIMARY KEY (shard, sequence)
);
"""
# Snapshot files (a header and a pickle) are large; stored out of line and
# uncompressed they spare the table's pages and pglz's attempts.
_STORAGE = "ALTER TABLE riskd_snapshot ALTER file SET STORAGE EXTERNAL"
#: Snapshots kept per shard, as in the data directory.
KEEP_SNAPSHOTS = 2

_SYNC_WARNING = "canceling wait for synchronous replication"

_LEDGER_COLUMNS = "sequence, ts, kind, market, cause, amount, balance_after, prev, hash"
# Amounts as text, cast in SQL: exact for any integer, whatever size psycopg would pick.
_INSERT_LEDGER = (
    f"INSERT INTO riskd_ledger (shard, asset, {_LEDGER_COLUMNS})"
    " SELECT %s, %s, s, ts, k, m, c, a::numeric, b::numeric, p, h FROM unnest("
    "%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::text[]) AS t(s, ts, k, m, c, a, b, p, h)"
    " ON CONFLICT (shard, asset, sequence) DO NOTHING"
)


# A report changes only on its own day; rewriting the unchanged ones would cost
# every snapshot a write per day of history.
_UPSERT_REPORTS = (
    "INSERT INTO riskd_report (shard, asset, day, records, report)"
    " SELECT %s, a, d, %s, r FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS t(a, d, r)"
    " ON CONFLICT (shard, asset, day) DO UPDATE"
    " SET records = EXCLUDED.records, report = EXCLUDED.report"
    " WHERE riskd_report.report <> EXCLUDED.report"
)


def _ledger_columns(rows: Sequence[LedgerEntry]) -> tuple[list[Any], ...]:
    return (
        [e.sequence for e in rows], [e.ts for e in rows], [e.kind.value for e in rows],
        [e.market for e in rows], [e.cause for e in rows], [str(e.amount) for e in rows],
        [str(e.balance_after) for e in rows], [e.prev for e in rows], [e.hash for e in rows],
    )  # fmt: skip


def redact(dsn: str) -> str:
    """``dsn`` without its password, for logs and error lines."""
    dsn = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


def connect(dsn: str) -> Any:
    """A psycopg connection, autocommit (transactions are explicit)."""
    try:
        import psycopg
    except ImportError as e:  # the base install has no PostgreSQL client
        raise StorageFault(
            "journal",
            redact(dsn),
            "PostgreSQL storage needs psycopg: pip install 'riskd[postgres]'",
        ) from e
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as e:
        raise StorageFault("journal", redact(dsn), _why(e)) from e


def _why(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class PostgresJournal:
    """The journal of ``shard`` in the database at ``dsn`` (see the module text).

    ``epoch``: the ownership epoch to write under (a cluster passes its etcd
    owner key's revision); None takes the current one plus one.  Raises
    :class:`StorageFault` when the database cannot be reached or a newer
    owner already holds the shard.  ``readonly``: read without taking the shard
    (tools, tests): every append is refused.  ``join``: write under ``epoch``
    without taking the shard (the owner's snapshot writer process): refused,
    like the owner, once a newer owner holds it.
    """

    def __init__(
        self,
        dsn: str,
        shard: str = "default",
        epoch: int | None = None,
        readonly: bool = False,
        join: bool = False,
    ) -> None:
        import psycopg

        self._errors: tuple[type[BaseException], ...] = (psycopg.Error, OSError)
        self.dsn = dsn
        self.shard = shard
        self.path = f"{redact(dsn)} shard {shard}"
        self._db = connect(dsn)
        self._unsure: list[str] = []
        self.readonly = readonly
        self._db.add_notice_handler(self._notice)
        try:
            self._open(epoch, join)
        except StaleWriter as e:
            self._db.close()
            raise StorageFault("journal", self.path, str(e)) from e
        except self._errors as e:
            self._db.close()
            raise StorageFault("journal", self.path, _why(e)) from e

    def _notice(self, diag: Any) -> None:
        text = f"{diag.message_primary or ''} {diag.message_detail or ''}"
        if _SYNC_WARNING in text:
            self._unsure.append(text.strip())

    def _open(self, epoch: int | None, join: bool) -> None:
        db = self._db
        if not join:  # a joining writer's owner made the tables (and ALTER locks them)
            with db.transaction():
                # Two nodes starting at once would race on CREATE TABLE's catalog rows.
                db.execute("SELECT pg_advisory_xact_lock(hashtext('riskd schema'))")
                db.execute(SCHEMA)
                db.execute(_STORAGE)
        with db.transaction():
            if self.readonly:
                row = (0,)  # no owner has epoch 0: every append is refused
            elif join and epoch is not None:
                row = (epoch,)  # checked at every write, as the owner's own
            elif epoch is None:
                row = db.execute(
                    "INSERT INTO riskd_owner (shard, epoch) VALUES (%s, 1)"
                    " ON CONFLICT (shard) DO UPDATE SET epoch = riskd_owner.epoch + 1"
                    " RETURNING epoch",
                    (self.shard,),
                ).fetchone()
            else:
                # Epochs only grow: an owner older than the one on record is fenced
                # before it writes anything.
                row = db.execute(
                    "INSERT INTO riskd_owner (shard, epoch) VALUES (%s, %s)"
                    " ON CONFLICT (shard) DO UPDATE SET epoch = EXCLUDED.epoch"
                    " WHERE riskd_owner.epoch <= EXCLUDED.epoch RETURNING epoch",
                    (self.shard, epoch),
                ).fetchone()
                if row is None:
                    (current,) = db.execute(
                        "SELECT epoch FROM riskd_owner WHERE shard = %s", (self.shard,)
                    ).fetchone()
                    raise StaleWriter(
                        f"shard {self.shard} is owned by epoch {current}, this writer is {epoch}"
                    )
            self.epoch = int(row[0])
        # Read after taking the epoch: no older writer can add a row any more.
        last = db.execute(
            "SELECT n, hash FROM riskd_journal WHERE shard = %s ORDER BY n DESC LIMIT 1",
            (self.shard,),
        ).fetchone()
        self._n, self._head = (int(last[0]), str(last[1])) if last else (0, GENESIS)

    @property
    def head(self) -> str:
        """The chain hash after the last record appended (GENESIS when empty)."""
        return self._head

    def append(self, records: Sequence[str]) -> None:
        """One transaction, fenced by the epoch; raises StorageFault on any failure."""
        head, n = self._head, self._n
        ns, hashes = [], []
        for r in records:
            head = chain(head, r)
            n += 1
            ns.append(n)
            hashes.append(head)
        db = self._db
        try:
            with db.transaction():
                row = db.execute(
                    "SELECT epoch FROM riskd_owner WHERE shard = %s FOR SHARE", (self.shard,)
                ).fetchone()
                current = None if row is None else int(row[0])
                if current != self.epoch:
                    raise StaleWriter(
                        f"shard {self.shard} is owned by epoch {current}, this writer is"
                        f" {self.epoch}: another node took it over"
                    )
                # One statement, one round trip for the whole group.
                db.execute(
                    "INSERT INTO riskd_journal (shard, n, epoch, record, hash)"
                    " SELECT %s, n, %s, r, h FROM unnest(%s::bigint[], %s::text[], %s::text[])"
                    " AS t(n, r, h)",
                    (self.shard, self.epoch, ns, list(records), hashes),
                )
        except StaleWriter as e:
            raise StorageFault("journal", self.path, str(e)) from e
        except self._errors as e:
            raise StorageFault("journal", self.path, _why(e)) from e
        if self._unsure:
            why = self._unsure[-1]
            self._unsure.clear()
            raise StorageFault("journal", self.path, f"commit not known to be replicated: {why}")
        self._head, self._n = head, n

    def hash_at(self, n: int) -> str | None:
        """The chain hash after the first ``n`` records; None if there are fewer."""
        if n == 0:
            return GENESIS
        row = self._db.execute(
            "SELECT hash FROM riskd_journal WHERE shard = %s AND n = %s", (self.shard, n)
        ).fetchone()
        return None if row is None else str(row[0])

    def _pages(self, after: int, columns: str) -> Iterator[tuple[Any, ...]]:
        while True:
            try:
                rows = self._db.execute(
                    f"SELECT n, {columns} FROM riskd_journal WHERE shard = %s AND n > %s"
                    " ORDER BY n LIMIT %s",
                    (self.shard, after, PAGE),
                ).fetchall()
            except self._errors as e:
                # The database unreachable is not a damaged journal (exit 3):
                # PostgreSQL checks its own pages; riskd checks the chain.
                raise StorageFault("journal", self.path, _why(e)) from e
            if not rows:
                return
            yield from rows
            after = int(rows[-1][0])

    def rows(self, after: int, upto: int) -> Iterator[tuple[int, str, str]]:
        """``(n, record, chain hash)`` of records ``after+1 .. upto``, a page at a time."""
        for n, record, hash_ in self._pages(after, "record, hash"):
            if n > upto:
                return
            yield int(n), str(record), str(hash_)

    def replay(self, after: int = 0) -> Iterator[str]:
        """Records after the first ``after`` ones, in order, each checked against the
        hash chain as it is read (from the hash after record ``after``): raises
        :class:`JournalCorrupt` at a record missing or changed."""
        try:
            head = self.hash_at(after)
        except self._errors as e:
            raise StorageFault("journal", self.path, _why(e)) from e
        if head is None:
            raise JournalCorrupt(f"{self.path}: no record {after} to replay after")
        expected = after + 1
        for n, record, stored in self._pages(after, "record, hash"):
            head = chain(head, record)
            if n != expected:
                raise JournalCorrupt(f"{self.path}: record {expected} is missing (next: {n})")
            if head != stored:
                raise JournalCorrupt(
                    f"{self.path}: record {n}: hash chain broken (the record or its hash changed)"
                )
            expected += 1
            yield str(record)

    def verify(self) -> tuple[int, str | None]:
        """``(records, None)`` without reading them: the daemon's start (a takeover)
        must not cost a walk of the whole journal.  What it replays is checked as it
        is read (:meth:`replay`); the records before its snapshot are vouched for by
        the chain hash the snapshot recorded there (checked at start), and
        ``riskd audit --storage`` walks the whole chain (:meth:`walk`)."""
        return self._n, None

    def walk(self) -> tuple[int, str | None]:
        """Walk the hash chain: ``(records, None)`` or ``(n, why)`` at the first break."""
        head, count = GENESIS, 0
        for n, record, stored in self._pages(0, "record, hash"):
            head = chain(head, record)
            count += 1
            if n != count:
                return n, f"record {count} is missing (the next one is {n})"
            if head != stored:
                return n, f"record {n}: hash chain broken (the record or its hash changed)"
        return count, None

    def count(self) -> int:
        (n,) = self._db.execute(
            "SELECT count(*) FROM riskd_journal WHERE shard = %s", (self.shard,)
        ).fetchone()
        return int(n)

    def store_snapshot(
        self,
        records: int,
        journal_hash: str,
        file: bytes,
        entries: Mapping[str, Sequence[LedgerEntry]] = {},
        events: Sequence[EventRow] = (),
        keep_events: int = 0,
        reports: Sequence[tuple[str, int, str]] = (),
    ) -> None:
        """Keep a snapshot where another node restoring the shard finds it, with the
        fund ledger ``entries`` and ``events`` it covers that the database lacks
        and the funds' daily ``reports`` ``(asset, day, JSON)`` as they are at it;
        one transaction, fenced like an append.  ``keep_events``: events kept per
        shard (``server.event_retention``)."""
        db = self._db
        try:
            with db.transaction():
                row = db.execute(
                    "SELECT epoch FROM riskd_owner WHERE shard = %s FOR SHARE", (self.shard,)
                ).fetchone()
                if row is None or int(row[0]) != self.epoch:
                    raise StaleWriter(f"shard {self.shard} has a newer owner")
                (newest,) = db.execute(
                    "SELECT COALESCE(MAX(records), -1) FROM riskd_snapshot WHERE shard = %s",
                    (self.shard,),
                ).fetchone()
                # Reports only move forward: an older snapshot stored late keeps its own.
                if reports and records >= int(newest):
                    db.execute(
                        _UPSERT_REPORTS,
                        (
                            self.shard,
                            records,
                            [a for a, _, _ in reports],
                            [d for _, d, _ in reports],
                            [r for _, _, r in reports],
                        ),
                    )
                db.execute(
                    "INSERT INTO riskd_snapshot (shard, records, hash, file)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (shard, records) DO NOTHING",
                    (self.shard, records, journal_hash, file),
                )
                db.execute(
                    "DELETE FROM riskd_snapshot WHERE shard = %s AND records NOT IN"
                    " (SELECT records FROM riskd_snapshot WHERE shard = %s"
                    "  ORDER BY records DESC LIMIT %s)",
                    (self.shard, self.shard, KEEP_SNAPSHOTS),
                )
                for asset, rows in entries.items():
                    if rows:
                        db.execute(_INSERT_LEDGER, (self.shard, asset, *_ledger_columns(rows)))
                if events:
                    db.execute(
                        "INSERT INTO riskd_event (shard, sequence, market, event)"
                        " SELECT %s, s, m, e FROM unnest(%s::bigint[], %s::text[], %s::bytea[])"
                        " AS t(s, m, e) ON CONFLICT (shard, sequence) DO NOTHING",
                        (
                            self.shard,
                            [n for n, _, _ in events],
                            [m for _, m, _ in events],
                            [e for _, _, e in events],
                        ),
                    )
                    db.execute(
                        "DELETE FROM riskd_event WHERE shard = %s AND sequence <= %s",
                        (self.shard, events[-1][0] - max(keep_events, 1)),
                    )
        except StaleWriter as e:
            raise StorageFault("snapshot", self.path, str(e)) from e
        except self._errors as e:
            raise StorageFault("snapshot", self.path, _why(e)) from e

    def ledger_count(self, asset: str) -> int:
        """Fund ledger entries of ``asset`` stored (they are numbered from 1, no gap)."""
        (n,) = self._db.execute(
            "SELECT COALESCE(MAX(sequence), 0) FROM riskd_ledger WHERE shard = %s AND asset = %s",
            (self.shard, asset),
        ).fetchone()
        return int(n)

    def ledger_hash(self, asset: str, sequence: int) -> str | None:
        row = self._db.execute(
            "SELECT hash FROM riskd_ledger WHERE shard = %s AND asset = %s AND sequence = %s",
            (self.shard, asset, sequence),
        ).fetchone()
        return None if row is None else str(row[0])

    def ledger_entries(self, asset: str, after: int) -> Iterator[LedgerEntry]:
        """Stored entries of ``asset`` after the first ``after``, in order, a page at a time."""
        while True:
            rows = self._db.execute(
                f"SELECT {_LEDGER_COLUMNS} FROM riskd_ledger WHERE shard = %s AND asset = %s"
                " AND sequence > %s ORDER BY sequence LIMIT %s",
                (self.shard, asset, after, PAGE),
            ).fetchall()
            if not rows:
                return
            for seq, ts, kind, market, cause, amount, balance, prev, hash_ in rows:
                yield LedgerEntry(
                    int(seq), int(ts), FundKind(kind), market, cause, int(amount), int(balance),
                    prev, hash_,
                )  # fmt: skip
            after = int(rows[-1][0])

    def reports(self, asset: str | None = None) -> list[tuple[str, int, int, str]]:
        """Stored daily reports ``(asset, day, records, JSON)`` by asset and day, of
        ``asset`` or all; ``records``: the snapshot that last changed the report."""
        try:
            rows = self._db.execute(
                "SELECT asset, day, records, report FROM riskd_report WHERE shard = %s"
                " AND (%s::text IS NULL OR asset = %s) ORDER BY asset, day",
                (self.shard, asset, asset),
            ).fetchall()
        except self._errors as e:
            raise StorageFault("journal", self.path, _why(e)) from e
        return [(str(a), int(d), int(n), str(r)) for a, d, n, r in rows]

    def event_bounds(self) -> tuple[int, int]:
        """(oldest, newest) event sequence stored; (0, 0) when none."""
        row = self._db.execute(
            "SELECT MIN(sequence), MAX(sequence) FROM riskd_event WHERE shard = %s", (self.shard,)
        ).fetchone()
        return (0, 0) if row[0] is None else (int(row[0]), int(row[1]))

    def event(self, sequence: int) -> bytes | None:
        row = self._db.execute(
            "SELECT event FROM riskd_event WHERE shard = %s AND sequence = %s",
            (self.shard, sequence),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def events(self, after: int) -> Iterator[list[EventRow]]:
        """Stored events after sequence ``after``, in pages."""
        while True:
            rows = self._db.execute(
                "SELECT sequence, market, event FROM riskd_event WHERE shard = %s"
                " AND sequence > %s ORDER BY sequence LIMIT %s",
                (self.shard, after, PAGE),
            ).fetchall()
            if not rows:
                return
            yield [(int(n), str(m), bytes(e)) for n, m, e in rows]
            after = int(rows[-1][0])

    def latest_snapshot(self) -> tuple[int, str, bytes] | None:
        """The newest stored snapshot: ``(records, journal hash, the file's bytes)``."""
        row = self._db.execute(
            "SELECT records, hash, file FROM riskd_snapshot WHERE shard = %s"
            " ORDER BY records DESC LIMIT 1",
            (self.shard,),
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), bytes(row[2]))

    def close(self) -> None:
        self._db.close()


def pull_snapshot(journal: PostgresJournal, data: Path) -> int | None:
    """Write the shard's newest stored snapshot into ``data`` when the directory has
    none as new (a node taking the shard over); the records it covers, if written."""
    stored = journal.latest_snapshot()
    if stored is None:
        return None
    records, _, raw = stored
    local = snapshot.latest_position(data)
    if local is not None and local.records >= records:
        return None
    # The file exactly as its writer made it (its format version included); the
    # loader checks it like any other snapshot and skips it if it does not verify.
    try:
        snapshot.install(data, records, raw)
    except OSError as e:
        raise StorageFault("snapshot", data, describe(e, data)) from e
    return records


def _agreeing(hi: int, same: Callable[[int], bool], lo: int = 0) -> int:
    """The last position in ``lo..hi`` where two histories agree, given they agree at
    ``lo`` and, once apart, stay apart (chained hashes; events numbered in order)."""
    if same(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if same(mid):
            lo = mid
        else:
            hi = mid
    return lo


def pull_ledger(journal: PostgresJournal, data: Path, asset: str) -> int:
    """Bring ``data``'s fund ledger file up to the entries stored in the database;
    how many were written.  Entries the file holds past where the two histories
    part (booked by inputs that never became durable) are removed first."""
    store = ledger_files.LedgerStore(data / ledger_files.FILE)
    try:
        local, theirs = store.last(asset), journal.ledger_count(asset)
        hi = min(local, theirs)
        agree = _agreeing(
            hi, lambda k: k == 0 or store.hash_at(asset, k) == journal.ledger_hash(asset, k)
        )
        if agree == theirs:
            return 0
        if local > agree:
            store.truncate(asset, agree)
        written = 0
        page: list[LedgerEntry] = []
        for entry in journal.ledger_entries(asset, agree):
            page.append(entry)
            if len(page) == PAGE:
                store.write([(asset, page)])
                written, page = written + len(page), []
        store.write([(asset, page)], full=True)
        return written + len(page)
    except journal._errors as e:
        raise StorageFault("ledger", journal.path, _why(e)) from e
    finally:
        store.close()


def pull_reports(journal: PostgresJournal, data: Path, asset: str) -> int:
    """Make ``data``'s ledger file hold the fund's daily reports stored with the
    snapshot just fetched (for reading offline until this node's first snapshot
    writes its own); how many."""
    store = ledger_files.LedgerStore(data / ledger_files.FILE)
    try:
        rows = [(a, d, r) for a, d, _, r in journal.reports(asset)]
        store.replace_reports(asset, rows)
        return len(rows)
    finally:
        store.close()


def pull_events(journal: PostgresJournal, data: Path) -> int:
    """Bring ``data``'s event file up to the events stored in the database (those
    published by earlier owners); how many were written."""
    store = event_files.EventStore(data / event_files.FILE)
    try:
        oldest, newest = journal.event_bounds()
        if newest == 0:
            return 0
        have_oldest, have_newest = store.bounds()
        lo, hi = max(oldest, have_oldest), min(newest, have_newest)

        def same(n: int) -> bool:
            return store.event(n) == journal.event(n)

        if have_newest == 0 or lo > hi or not same(lo):
            agree = 0  # nothing in common: the database's events replace the file's
            store.db.execute("DELETE FROM events")
        else:
            agree = _agreeing(hi, same, lo)
            if agree >= newest:
                return 0
            store.db.execute("DELETE FROM events WHERE sequence > ?", (agree,))
        written = 0
        for page in journal.events(agree):
            store.write(page, _NO_LIMIT, full=False)
            written += len(page)
        store.write([], _NO_LIMIT, full=True)
        return written
    except journal._errors as e:
        raise StorageFault("events", journal.path, _why(e)) from e
    finally:
        store.close()


#: Retention while pulling: the daemon's own writer trims to its setting.
_NO_LIMIT = 1 << 62


def push_snapshot(
    journal: PostgresJournal,
    data: Path,
    records: int,
    journal_hash: str,
    state: Mapping[str, Any],
    keep_events: int,
) -> None:
    """Store the snapshot of position ``records`` just written in ``data`` (whose
    state is ``state``) in the database, with the fund ledger entries and
    events it covers that the database does not hold yet (read from the data
    directory's files, made durable before the snapshot was taken)."""
    path = snapshot.path_of(data, records)
    try:
        raw = path.read_bytes()
        entries: dict[str, list[LedgerEntry]] = {}
        for asset, fund in state["funds"].items():
            upto, have = len(fund.ledger), journal.ledger_count(asset)
            if upto > have:
                entries[asset] = ledger_files.read_page(
                    data / ledger_files.FILE, asset, have + 1, upto - have
                )
        count = int(state.get("events", 0))
        _, newest = journal.event_bounds()
        start = max(newest, count - keep_events) + 1
        events = (
            event_files.read_range(data / event_files.FILE, start, count + 1)
            if count >= start
            else []
        )
    except OSError as e:
        raise StorageFault("snapshot", path, describe(e, path)) from e
    except journal._errors as e:
        raise StorageFault("snapshot", journal.path, _why(e)) from e
    except (sqlite3.Error, ValueError) as e:  # the data directory's ledger or event file
        raise StorageFault("snapshot", data, describe(e, data)) from e
    reports = ledger_files.reports_of(state["funds"])
    journal.store_snapshot(records, journal_hash, raw, entries, events, keep_events, reports)


def opener(
    dsn: str, shard: str, epoch: int | None = None, assets: Sequence[str] = ()
) -> Callable[[Path], PostgresJournal]:
    """What the daemon calls to open its journal (``Daemon.open_journal``): takes the
    shard, then fetches the newest stored snapshot, the fund ledgers of ``assets``
    and the events into the data directory, so that only the journal's tail is
    replayed."""

    def open_journal(data: Path) -> PostgresJournal:
        journal = PostgresJournal(dsn, shard, epoch)
        try:
            fetched = pull_snapshot(journal, data)
            for asset in assets:
                pull_ledger(journal, data, asset)
                if fetched is not None:
                    pull_reports(journal, data, asset)
            pull_events(journal, data)
        except BaseException:
            journal.close()
            raise
        return journal

    return open_journal
