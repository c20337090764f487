"""The funds' ledgers on disk: ``ledger.sqlite3`` in the data directory.

The daemon keeps only the newest ``server.fund_ledger_memory`` entries of each
fund in memory (:class:`riskd.core.ledger.Ledger`); every entry is written
here by :class:`LedgerWriter`, a trio task behind a bounded channel that
writes whatever is waiting in one transaction in a worker thread (group
commit), so the fund actor never waits on the disk unless the writer is a
whole channel behind.  ``ListFundLedger`` pages from this file
(:func:`read_page`).

The ledger is derived data: replaying the journal books the same entries
with the same hashes.  So the file needs to be durable only up to the newest
snapshot, which no longer carries the entries: the daemon calls
:meth:`LedgerWriter.sync` (an fsync'd commit) before it starts writing a
snapshot, and at start :func:`agree` cuts the file back to what the snapshot
covers (entries booked by inputs that never became durable are removed, the
replay books them again, or others) after checking that the file holds as
many entries as the snapshot counts and, hash for hash, the newest ones it
kept (the whole chain: ``riskd audit``).  A file that does not (deleted, damaged, from
another directory) makes the daemon ignore the snapshot and replay the
journal from its start: slower, never wrong.  Between snapshots commits are
``synchronous=NORMAL`` (no fsync): a crash may lose them, the replay writes
them again.

A write that fails is a storage fault like a failed journal write:
fail-stop, exit 4 (:mod:`riskd.storage.faults`).

Amounts are exact at any size.  The supply cap (riskd.core.units.SUPPLY_CAP)
keeps a fund's balance inside int64, but fee credits are never refused and
SQLite's INTEGER holds 64 bits, so as a second line a value that fits is stored as an
INTEGER, a larger one as its decimal digits in a BLOB (:func:`exact`), which
the columns' INTEGER affinity never converts, so files written before keep
their schema and stay readable as they are.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from riskd.core.events import FundKind
from riskd.core.insurance_fund import GENESIS, DailyReport, InsuranceFund, LedgerEntry
from riskd.core.ledger import Ledger
from riskd.storage.faults import StorageFault, describe, fail_stop
from riskd.storage.group import GroupWriter, Marker

if TYPE_CHECKING:
    from riskd.actors.fund import FundActor

__all__ = [
    "FILE",
    "DEFAULT_MEMORY",
    "LedgerStore",
    "LedgerWriter",
    "agree",
    "read_page",
    "count",
    "export",
    "report_json",
    "reports_of",
]

FILE = "ledger.sqlite3"
#: Entries per fund kept in memory (``server.fund_ledger_memory``): ~300 bytes each.
DEFAULT_MEMORY = 10_000
#: Groups of entries the writer's channel holds before fund actors wait.
CAPACITY = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    asset TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    market TEXT NOT NULL,
    cause TEXT NOT NULL,
    amount INTEGER NOT NULL,
    balance_after INTEGER NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (asset, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reports (
    asset TEXT NOT NULL,
    day INTEGER NOT NULL,
    report TEXT NOT NULL,
    PRIMARY KEY (asset, day)
) WITHOUT ROWID;
"""
_COLUMNS = "sequence, ts, kind, market, cause, amount, balance_after, prev, hash"


_LOW, _HIGH = -(1 << 63), (1 << 63) - 1


def exact(value: int) -> int | bytes:
    """``value`` as SQLite keeps it exactly: an INTEGER when it fits in 64 bits,
    else its decimal digits as a BLOB (TEXT would be turned into a REAL by the
    INTEGER affinity: rounded)."""
    return value if _LOW <= value <= _HIGH else str(value).encode("ascii")


def integer(stored: object) -> int:
    """The integer :func:`exact` stored; ValueError for anything else (a REAL, a
    damaged file)."""
    if type(stored) is int:
        return stored
    if isinstance(stored, bytes) and stored[-1:].isdigit():
        return int(stored.decode("ascii"))  # ValueError if not all digits
    raise ValueError(f"{stored!r} is not an amount riskd wrote")


def _row(asset: str, e: LedgerEntry) -> tuple[Any, ...]:
    return (
        asset, e.sequence, e.ts, e.kind.value, e.market, e.cause, exact(e.amount),
        exact(e.balance_after), e.prev, e.hash,
    )  # fmt: skip


def _entry(row: Sequence[Any]) -> LedgerEntry:
    seq, ts, kind, market, cause, amount, balance, prev, hash_ = row
    return LedgerEntry(
        seq, ts, FundKind(kind), market, cause, integer(amount), integer(balance), prev, hash_
    )


def report_json(r: DailyReport) -> str:
    """A daily report as stored (this file's ``reports``, PostgreSQL's
    ``riskd_report``): JSON, keys sorted, so equal reports are equal strings and
    amounts of any size exact."""
    return json.dumps(
        {
            "opening_balance": r.opening_balance,
            "closing_balance": r.closing_balance,
            "liquidation_volume": r.liquidation_volume,
            "inflow_by_kind": {k.value: v for k, v in r.inflow_by_kind.items()},
            "outflow_by_kind": {k.value: v for k, v in r.outflow_by_kind.items()},
        },
        sort_keys=True,
    )


#: What a write or read of the file can raise: SQLite's errors, a value it cannot
#: bind (OverflowError) or one riskd did not write (:func:`integer`).
_FAULTS = (sqlite3.Error, OverflowError, ValueError)


def reports_of(funds: Mapping[str, InsuranceFund]) -> list[tuple[str, int, str]]:
    """Every daily report of ``funds`` as stored: ``(asset, day, JSON)``."""
    return [(a, d, report_json(r)) for a, f in funds.items() for d, r in sorted(f.reports.items())]


class LedgerStore:
    """The file, opened for writing (one writer: the daemon)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # Used by the writer's worker threads one at a time, never concurrently.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StorageFault("ledger", path, e) from e

    def write(
        self, groups: Iterable[tuple[str, Sequence[LedgerEntry]]], full: bool = False
    ) -> None:
        """Insert entries in one transaction; ``full``: fsync it (and all before it)."""
        db = self._db
        try:
            db.execute("PRAGMA synchronous=FULL" if full else "PRAGMA synchronous=NORMAL")
            db.execute("BEGIN")
            for asset, entries in groups:
                db.executemany(
                    f"INSERT INTO ledger (asset, {_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [_row(asset, e) for e in entries],
                )
            db.execute("COMMIT")
        except _FAULTS as e:
            raise StorageFault("ledger", self.path, e) from e

    def write_reports(self, rows: Sequence[tuple[str, int, str]]) -> None:
        """Upsert daily reports ``(asset, day, JSON)`` (for reading offline)."""
        try:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO reports (asset, day, report) VALUES (?,?,?)", rows
            )
            self._db.execute("COMMIT")
        except _FAULTS as e:
            raise StorageFault("ledger", self.path, e) from e

    def replace_reports(self, asset: str, rows: Sequence[tuple[str, int, str]]) -> None:
        """Make ``rows`` the fund's whole set of daily reports in the file."""
        try:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM reports WHERE asset = ?", (asset,))
            self._db.executemany("INSERT INTO reports (asset, day, report) VALUES (?,?,?)", rows)
            self._db.execute("COMMIT")
        except _FAULTS as e:
            raise StorageFault("ledger", self.path, e) from e

    def assets(self) -> set[str]:
        """The assets the file holds entries of."""
        try:
            return {a for (a,) in self._db.execute("SELECT DISTINCT asset FROM ledger")}
        except _FAULTS as e:
            raise StorageFault("ledger", self.path, e) from e

    def truncate(self, asset: str, keep: int) -> None:
        """Remove the entries after ``keep`` (booked by inputs no snapshot covers)."""
        try:
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("DELETE FROM ledger WHERE asset = ? AND sequence > ?", (asset, keep))
        except _FAULTS as e:
            raise StorageFault("ledger", self.path, e) from e

    def replace(self, asset: str, entries: Sequence[LedgerEntry]) -> None:
        """Make ``entries`` the fund's whole ledger in the file (fsync'd)."""
        self.truncate(asset, 0)
        self.write([(asset, entries)], full=True)

    def verify(self, asset: str, ledger: Ledger) -> str | None:
        """Why the file does not hold ``ledger``'s entries; None if it does.

        As many entries as ``ledger`` counts, and those it holds in memory
        (the newest, as a snapshot saved them) equal, hash for hash, each
        chaining to the one before.  The whole chain, from genesis, is
        ``riskd audit``'s: it is the journal's replay that makes every entry,
        and a start already walks the journal's own chain.
        """
        try:
            return self._disagreement(asset, ledger)
        except _FAULTS as e:  # a damaged file: the daemon replays instead of trusting it
            return f"fund {asset}: unreadable: {describe(e, self.path)}"

    def _disagreement(self, asset: str, ledger: Ledger) -> str | None:
        upto = len(ledger)
        (n,) = self._db.execute(
            "SELECT COUNT(*) FROM ledger WHERE asset = ? AND sequence <= ?", (asset, upto)
        ).fetchone()
        if n != upto:
            return f"fund {asset}: {n} entries on disk, the snapshot covers {upto}"
        kept = {e.sequence: e for e in ledger.recent()}
        start = max(1, ledger.first_in_memory - 1)
        prev = GENESIS if start == 1 else None
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM ledger WHERE asset = ? AND sequence BETWEEN ? AND ?"
            " ORDER BY sequence",
            (asset, start, upto),
        )
        for row in rows:
            e = _entry(row)
            if e.hash != e.digest() or (prev is not None and e.prev != prev):
                return f"fund {asset}: entry {e.sequence} breaks the hash chain"
            if e.sequence in kept and kept[e.sequence] != e:
                return f"fund {asset}: entry {e.sequence} is not the snapshot's"
            prev = e.hash
        return None

    def last(self, asset: str) -> int:
        """The number of the fund's newest entry in the file (0 when none)."""
        try:
            (n,) = self._db.execute(
                "SELECT COALESCE(MAX(sequence), 0) FROM ledger WHERE asset = ?", (asset,)
            ).fetchone()
        except _FAULTS as e:
            raise StorageFault("ledger", self.path, e) from e
        return int(n)

    def hash_at(self, asset: str, sequence: int) -> str | None:
        """Entry ``sequence``'s hash (GENESIS for 0); None if the file lacks it."""
        if sequence == 0:
            return GENESIS
        try:
            row = self._db.execute(
                "SELECT hash FROM ledger WHERE asset = ? AND sequence = ?", (asset, sequence)
            ).fetchone()
        except sqlite3.Error as e:
            raise StorageFault("ledger", self.path, e) from e
        return None if row is None else str(row[0])

    def close(self) -> None:
        self._db.close()


def read_page(path: Path, asset: str, start: int, size: int) -> list[LedgerEntry]:
    """Entries ``start``.. (at most ``size``) as written so far, read-only."""
    if size <= 0 or not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM ledger WHERE asset = ? AND sequence >= ?"
            " ORDER BY sequence LIMIT ?",
            (asset, start, size),
        ).fetchall()
    finally:
        db.close()
    out: list[LedgerEntry] = []
    for row in rows:  # only the run without a gap: the writer may still be behind
        if row[0] != start + len(out):
            break
        out.append(_entry(row))
    return out


def count(path: Path, asset: str) -> int:
    """Entries of ``asset`` in the file (0 if there is none); read-only."""
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute(
            "SELECT COALESCE(MAX(sequence), 0) FROM ledger WHERE asset = ?", (asset,)
        ).fetchone()[0])  # fmt: skip
    finally:
        db.close()


class _Sync(Marker):
    __slots__ = ("reports",)

    def __init__(self, reports: list[tuple[str, int, str]]) -> None:
        super().__init__()
        self.reports = reports  # (asset, day, JSON) as they were at the sync


class LedgerWriter(GroupWriter[tuple[str, list[LedgerEntry]]]):
    """Writes fund entries to :class:`LedgerStore` off the engine's path.

    Constructed before the data directory is checked; :meth:`open` opens the
    file (at recovery), :meth:`run` is its task.
    """

    def __init__(
        self,
        path: Path,
        capacity: int = CAPACITY,
        on_fault: Callable[[StorageFault], object] = fail_stop,
    ) -> None:
        super().__init__(capacity, on_fault)
        self.path = path
        self.store: LedgerStore | None = None

    def open(self) -> LedgerStore:
        if self.store is None:
            self.store = LedgerStore(self.path)
        return self.store

    async def submit(self, asset: str, entries: list[LedgerEntry]) -> None:
        await self._put((asset, entries))

    async def sync(self, funds: Iterable[InsuranceFund] = ()) -> None:
        """Return once everything submitted before is on disk (fsync'd), with
        the daily reports of ``funds`` as they are now."""
        # Encoded here: the fund actor goes on changing its reports meanwhile.
        await self._sync(
            _Sync([(f.asset, d, report_json(r)) for f in funds for d, r in f.reports.items()])
        )

    def _write(self, items: list[tuple[str, list[LedgerEntry]]], syncs: list[Marker]) -> None:
        try:
            store = self.open()
            store.write(items, full=bool(syncs))
            for s in syncs:
                store.write_reports(cast(_Sync, s).reports)
        except StorageFault:
            raise
        except Exception as e:
            # Whatever else a write raises, the file is behind what was acknowledged
            # to the fund actor: the same one line and exit 4, not a traceback.
            raise StorageFault("ledger", self.path, e) from e


def agree(store: LedgerStore, funds: dict[str, InsuranceFund]) -> str | None:
    """Make the file hold exactly what ``funds`` (a snapshot's) have booked.

    Entries after each fund's count are removed (a restart replays the inputs
    that booked them); the rest must match the fund's (:meth:`LedgerStore.verify`).  Returns why
    they disagree (the caller then ignores the snapshot), None when they do.
    Funds from a snapshot that still carried every entry (a list) are written
    out first.
    """
    for asset, fund in funds.items():
        ledger = fund.ledger
        if not isinstance(ledger, Ledger) or ledger.keep is None:
            # Every entry is in the snapshot: the file is rebuilt from it.
            store.replace(asset, list(ledger))
            continue
        store.truncate(asset, len(ledger))
        why = store.verify(asset, ledger)
        if why is not None:
            return f"{store.path}: {why}"
    return None


def bound(actor: FundActor, keep: int) -> None:
    """Make the actor's fund keep at most ``keep`` entries in memory.

    A fund whose ledger holds every entry (a new fund, or one from a format v3
    snapshot, which :func:`agree` has written out) keeps its newest ``keep``.
    """
    saved: object = actor.fund.ledger
    ledger = saved if isinstance(saved, Ledger) else Ledger(None, cast(list[LedgerEntry], saved))
    if ledger.keep != keep:
        actor.fund.ledger = ledger.rebound(keep)


def export(data: Path, funds: dict[str, InsuranceFund], keep: int = DEFAULT_MEMORY) -> None:
    """Write pure-engine funds' ledgers into ``data``'s file and bound them in
    memory, as the daemon keeps them (for tools that write a snapshot)."""
    store = LedgerStore(data / FILE)
    try:
        for asset, fund in funds.items():
            store.replace(asset, list(fund.ledger))
            store.write_reports([(asset, d, report_json(r)) for d, r in fund.reports.items()])
            fund.ledger = fund.ledger.rebound(keep)
    finally:
        store.close()


def audit_file(path: Path, funds: dict[str, InsuranceFund]) -> tuple[bool, list[str]]:
    """Compare ``path`` with ledgers replayed from the journal (``riskd audit``).

    ``funds`` keep every entry (the pure engine).  Each entry in the file must
    be the replayed entry of that number, hash included; the file may end
    early (the daemon still writing, or entries past its newest snapshot lost
    in a crash: the next start books them again) or hold entries past the
    journal (booked by inputs never acknowledged: the next start removes
    them).  Returns ``(ok, report lines)``.
    """
    if not path.exists():
        return True, [f"ok   {path.name}: none (written by riskd since journal format 2)"]
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    ok, lines = True, []
    try:
        for asset, fund in funds.items():
            replayed = list(fund.ledger)
            n, bad, prev = 0, "", GENESIS
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM ledger WHERE asset = ? ORDER BY sequence", (asset,)
            )
            for row in rows:
                e = _entry(row)
                n += 1
                if e.sequence != n:
                    bad = f"entry {n} is missing"
                elif n <= len(replayed) and e != replayed[n - 1]:
                    bad = f"entry {n} differs from the journal's replay"
                elif e.hash != e.digest() or e.prev != prev:
                    bad = f"entry {n} breaks the hash chain"
                if bad:
                    break
                prev = e.hash
            ok &= not bad
            if bad:
                lines.append(f"FAIL {path.name} fund {asset}: {bad}")
                continue
            extra = f"; {n - len(replayed)} past the journal" if n > len(replayed) else ""
            lines.append(
                f"ok   {path.name} fund {asset}: {n} of {len(replayed)} entries, each the"
                f" replayed one{extra}"
            )
    except (sqlite3.DatabaseError, ValueError) as e:
        return False, [f"FAIL {path.name}: unreadable: {e}"]
    finally:
        db.close()
    return ok, lines
