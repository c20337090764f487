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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from riskd.storage import snapshot
from riskd.storage.faults import StorageFault, describe
from riskd.storage.journal import GENESIS, StaleWriter, chain

__all__ = ["PostgresJournal", "connect", "opener", "pull_snapshot", "push_snapshot", "redact"]

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
"""
# Snapshot files (a header and a pickle) are large; stored out of line and
# uncompressed they spare the table's pages and pglz's attempts.
_STORAGE = "ALTER TABLE riskd_snapshot ALTER file SET STORAGE EXTERNAL"
#: Snapshots kept per shard, as in the data directory.
KEEP_SNAPSHOTS = 2

_SYNC_WARNING = "canceling wait for synchronous replication"


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
    (tools, tests): every append is refused.
    """

    def __init__(
        self, dsn: str, shard: str = "default", epoch: int | None = None, readonly: bool = False
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
            self._open(epoch)
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

    def _open(self, epoch: int | None) -> None:
        db = self._db
        with db.transaction():
            # Two nodes starting at once would race on CREATE TABLE's catalog rows.
            db.execute("SELECT pg_advisory_xact_lock(hashtext('riskd schema'))")
            db.execute(SCHEMA)
            db.execute(_STORAGE)
        with db.transaction():
            if self.readonly:
                row = (0,)  # no owner has epoch 0: every append is refused
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

    def replay(self, after: int = 0) -> Iterator[str]:
        """Records after the first ``after`` ones, in order."""
        for _, record in self._pages(after, "record"):
            yield str(record)

    def verify(self) -> tuple[int, str | None]:
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

    def store_snapshot(self, records: int, journal_hash: str, file: bytes) -> None:
        """Keep a snapshot where another node restoring the shard finds it (fenced)."""
        try:
            with self._db.transaction():
                row = self._db.execute(
                    "SELECT epoch FROM riskd_owner WHERE shard = %s FOR SHARE", (self.shard,)
                ).fetchone()
                if row is None or int(row[0]) != self.epoch:
                    raise StaleWriter(f"shard {self.shard} has a newer owner")
                self._db.execute(
                    "INSERT INTO riskd_snapshot (shard, records, hash, file)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (shard, records) DO NOTHING",
                    (self.shard, records, journal_hash, file),
                )
                self._db.execute(
                    "DELETE FROM riskd_snapshot WHERE shard = %s AND records NOT IN"
                    " (SELECT records FROM riskd_snapshot WHERE shard = %s"
                    "  ORDER BY records DESC LIMIT %s)",
                    (self.shard, self.shard, KEEP_SNAPSHOTS),
                )
        except StaleWriter as e:
            raise StorageFault("snapshot", self.path, str(e)) from e
        except self._errors as e:
            raise StorageFault("snapshot", self.path, _why(e)) from e

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


def push_snapshot(journal: PostgresJournal, data: Path) -> int | None:
    """Store the newest snapshot of ``data`` in the database; the records it covers."""
    local = snapshot.latest_position(data)
    if local is None:
        return None
    try:
        raw = local.path.read_bytes()
    except OSError as e:
        raise StorageFault("snapshot", local.path, describe(e, local.path)) from e
    journal.store_snapshot(local.records, local.journal_hash, raw)
    return local.records


def opener(dsn: str, shard: str, epoch: int | None = None) -> Callable[[Path], PostgresJournal]:
    """What the daemon calls to open its journal (``Daemon.open_journal``)."""

    def open_journal(data: Path) -> PostgresJournal:
        journal = PostgresJournal(dsn, shard, epoch)
        try:
            pull_snapshot(journal, data)
        except BaseException:
            journal.close()
            raise
        return journal

    return open_journal
