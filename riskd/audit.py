"""``riskd audit``: verify a data directory offline.

Reads the journal without the daemon, checks its hash chain, replays every
record into the pure engine and checks that every unit the insurance funds
ever held is explained:

* the journal's hash chain is intact (any changed byte breaks it);
* the journal holds every record the newest snapshot covers, with the chain
  hash the snapshot recorded, and nothing committed is missing from its
  ``-wal`` (what ``riskd serve`` checks before starting);
* each fund's ledger chains from genesis, and its balance is the sum of its
  entries;
* every payout (shortfall, backstop margin) is tied to a liquidation that
  settled, and every ADL to a liquidation the fund did not cover;
* conservation per asset and the other invariants hold;
* the admin audit log's hash chain is intact.

``riskd audit --storage postgresql://... [--shard NAME]`` checks a shard's
journal in PostgreSQL the same way (read-only, taking nothing from its
owner): the chain and record numbering, the newest stored snapshot's
position, the fund ledger entries and daily reports stored with snapshots
against the replay, the funds, ADL and invariants (and a node's admin audit
log with ``--data``).

Prints a short report; exits 0 when everything holds, 1 otherwise, and 3
(as ``riskd serve``) for a journal record of a format it does not know.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from riskd.config import Config
from riskd.core import (
    GENESIS,
    AdlEvent,
    Effect,
    Engine,
    FundKind,
    LiquidationSettled,
    digest,
    violations,
)
from riskd.storage import StorageFault, admin_log, codec, ledger, records, snapshot
from riskd.storage.journal import chain, hash_at, head_problem, wal_problem
from riskd.storage.postgres import redact
from riskd.storage.records import EngineTarget, Record

__all__ = ["audit", "audit_postgres", "replay_record", "EXIT_UNKNOWN_FORMAT"]

#: A journal record of a format this riskd does not know (as ``riskd serve``).
EXIT_UNKNOWN_FORMAT = 3

_PAYOUTS = (FundKind.SHORTFALL, FundKind.BACKSTOP_MARGIN)


def replay_record(engine: Engine, record: Record) -> list[Effect]:
    """Apply one journal record to a pure engine (the daemon's rules); its effects."""
    return records.apply(record, EngineTarget(engine))


@dataclass(slots=True)
class _Replayed:
    engine: Engine
    records: int
    at_snapshot: str | None  # the chain hash after the snapshot's position
    settled: set[str]
    adl: list[AdlEvent]
    # The funds' daily reports at the snapshot's position, as stored (asset, day, JSON).
    reports_at_snapshot: list[tuple[str, int, str]]


def _replay(
    config: Config,
    rows: Iterable[tuple[int, str, str]],
    where: object,
    snapshot_at: int | None,
) -> _Replayed | str:
    """Walk the chain of ``rows`` (n, record, hash) replaying each record; why not, if
    it breaks.  Raises :class:`codec.UnknownFormat`."""
    engine = Engine(config.markets, config.funds)
    head, n = GENESIS, 0
    at_snapshot = GENESIS if snapshot_at == 0 else None
    settled: set[str] = set()
    adl: list[AdlEvent] = []
    reports: list[tuple[str, int, str]] = []
    try:
        for row_n, record, stored in rows:
            head = chain(head, record)
            if row_n != n + 1:
                return f"FAIL journal record {n + 1} is missing (the next one is {row_n})"
            n = row_n
            if head != stored:
                return f"FAIL journal hash chain broken at record {n}"
            if n == snapshot_at:
                at_snapshot = head
            try:
                decoded = codec.decode(record)
            except codec.UnknownFormat as unknown:
                raise codec.UnknownFormat(unknown.version, f"{where}: record {n}: ") from None
            for e in replay_record(engine, decoded):
                if isinstance(e, LiquidationSettled):
                    settled.add(f"liq:{e.market}:{e.liquidation_id}")
                elif isinstance(e, AdlEvent):
                    adl.append(e)
            if n == snapshot_at:
                reports = ledger.reports_of(engine.funds)
    except (sqlite3.DatabaseError, codec.BadRecord, ValueError, KeyError, TypeError) as e:
        return f"FAIL journal unreadable at record {n}: {e}"
    return _Replayed(engine, n, at_snapshot, settled, adl, reports)


def audit(config: Config, data_dir: Path) -> tuple[bool, list[str]]:
    """Check a data directory; ``(ok, report lines)``."""
    path = data_dir / "journal.sqlite3"
    lines = [f"riskd audit of {path}"]
    if not path.exists():
        return False, [*lines, "FAIL no journal"]
    lost = wal_problem(path)  # before SQLite opens it and "recovers" without the frames
    if lost:
        return False, [*lines, f"FAIL journal: {lost}"]
    snap = snapshot.latest_position(data_dir)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    behind = head_problem(path, lambda n: hash_at(db, n))
    if behind:
        return False, [*lines, f"FAIL journal: {behind}"]
    try:
        rows = db.execute("SELECT n, record, hash FROM journal ORDER BY n")
        done = _replay(config, rows, path, None if snap is None else snap.records)
    finally:
        db.close()
    if isinstance(done, str):
        return False, [*lines, done]
    ok = True
    lines.append(f"ok   journal: {done.records} records, hash chain intact")
    if snap is not None:
        disagree = snapshot.mismatch(snap, path, done.records, done.at_snapshot)
        ok &= disagree is None
        if disagree:
            lines.append(f"FAIL snapshot: {disagree}")
        else:
            lines.append(f"ok   snapshot {snap.path.name}: its journal position is in the journal")
    ok &= _funds(done, lines)
    file_ok, file_lines = ledger.audit_file(data_dir / ledger.FILE, done.engine.funds)
    ok &= file_ok
    lines += file_lines
    ok &= _adl(done, lines)
    ok &= _admin_log(data_dir, lines)
    ok &= _invariants(done, lines)
    return ok, lines


def audit_postgres(
    config: Config, dsn: str, shard: str, data_dir: Path | None = None
) -> tuple[bool, list[str]]:
    """Check a shard's journal in PostgreSQL (``riskd audit --storage``), read-only:
    its chain, the newest stored snapshot's position, the stored fund ledger
    entries against the replay, invariants; ``data_dir``: also a node's admin
    audit log.  ``(ok, report lines)``."""
    from riskd.storage.postgres import PostgresJournal

    journal = PostgresJournal(dsn, shard, readonly=True)  # raises StorageFault
    lines = [f"riskd audit of {journal.path}"]
    try:
        stored = journal.latest_snapshot()
        position = None if stored is None else stored[0]
        done = _replay(config, journal.rows(0, 1 << 62), journal.path, position)
        if isinstance(done, str):
            return False, [*lines, done]
        ok = True
        lines.append(f"ok   journal: {done.records} records, hash chain intact")
        if stored is not None:
            records, want, _ = stored
            if records > done.records or done.at_snapshot != want:
                ok = False
                lines.append(
                    f"FAIL snapshot at record {records}: the journal does not reach it with"
                    " the chain hash it recorded (records lost, or another shard's)"
                )
            else:
                lines.append(f"ok   snapshot at record {records}: its position is in the journal")
        ok &= _funds(done, lines)
        for asset, fund in done.engine.funds.items():
            replayed = list(fund.ledger)
            n, bad = 0, ""
            for entry in journal.ledger_entries(asset, 0):
                n += 1
                if entry.sequence != n:
                    bad = f"entry {n} is missing"
                elif n > len(replayed) or entry != replayed[n - 1]:
                    bad = f"entry {n} differs from the journal's replay"
                if bad:
                    break
            ok &= not bad
            lines.append(
                f"FAIL stored ledger fund {asset}: {bad}"
                if bad
                else f"ok   stored ledger fund {asset}: {n} of {len(replayed)} entries, each the"
                " replayed one (stored up to the newest snapshot)"
            )
        if stored is not None:
            ok &= _stored_reports(done, journal.reports(), stored[0], lines)
        ok &= _adl(done, lines)
        if data_dir is not None:
            ok &= _admin_log(data_dir, lines)
        ok &= _invariants(done, lines)
        return ok, lines
    finally:
        journal.close()


def _stored_reports(
    done: _Replayed, stored: list[tuple[str, int, int, str]], at: int, lines: list[str]
) -> bool:
    """The daily reports stored with the snapshots: each must be the replay's at
    the newest snapshot's position, none missing (a shard whose snapshots were all
    stored by a riskd that did not store reports has none)."""
    ok = True
    want: dict[str, dict[int, str]] = {a: {} for a in done.engine.funds}
    for asset, day, report in done.reports_at_snapshot:
        want[asset][day] = report
    have: dict[str, dict[int, str]] = {}
    for asset, day, _, report in stored:
        have.setdefault(asset, {})[day] = report
    for asset in sorted(want.keys() | have.keys()):
        days, got = want.get(asset, {}), have.get(asset, {})
        if not got:
            lines.append(
                f"ok   stored daily reports fund {asset}: none"
                + (" (the snapshot was stored without them)" if days else "")
            )
            continue
        bad = sorted(d for d in days.keys() | got.keys() if days.get(d) != got.get(d))
        ok &= not bad
        if bad:
            lines.append(
                f"FAIL stored daily reports fund {asset}: day {bad[0]} "
                + ("is missing" if bad[0] not in got else "differs from the journal's replay")
                + f" (at the snapshot of record {at})"
            )
            continue
        newest = max(got)
        closing = json.loads(got[newest])["closing_balance"]
        lines.append(
            f"ok   stored daily reports fund {asset}: {len(got)} days, each the replay's at the"
            f" snapshot of record {at}; day {newest} closing balance {closing}"
        )
    return ok


def _funds(done: _Replayed, lines: list[str]) -> bool:
    ok = True
    for asset, fund in done.engine.funds.items():
        prev, total, problems = GENESIS, 0, []
        for entry in fund.ledger:
            if entry.prev != prev or entry.hash != entry.digest():
                problems.append(f"entry {entry.sequence} breaks the ledger chain")
            prev = entry.hash
            total += entry.amount
            if entry.kind in _PAYOUTS and entry.cause not in done.settled:
                problems.append(f"entry {entry.sequence} pays out for unsettled {entry.cause}")
        if total != fund.balance:
            problems.append(f"balance {fund.balance} != sum of entries {total}")
        ok &= not problems
        tag = "ok  " if not problems else "FAIL"
        lines.append(
            f"{tag} fund {asset}: balance {fund.balance} quantums, {len(fund.ledger)} entries,"
            f" in {fund.total_inflow}, out {fund.total_outflow}"
        )
        lines += [f"     {p}" for p in problems]
    return ok


def _adl(done: _Replayed, lines: list[str]) -> bool:
    # The waterfall on every ADL execution: the fund paid exactly what the execution
    # says it paid (up to its limit, the rest deleveraged), and the counterparties gave
    # up no more than the uncovered deficit plus tick rounding (overshoot >= 0).
    paid: dict[str, int] = {}
    for f in done.engine.funds.values():
        for entry in f.ledger:
            if entry.kind is FundKind.SHORTFALL:
                paid[entry.cause] = paid.get(entry.cause, 0) - entry.amount
    wrong = [
        e
        for e in done.adl
        if paid.get(f"liq:{e.market}:{e.liquidation_id}", 0) != e.fund_paid
        or e.overshoot < 0
        or e.overshoot != e.haircut + e.fund_paid - e.deficit
    ]
    if wrong:
        lines.append(
            f"FAIL ADL: {len(wrong)} executions break the waterfall (fund paid or haircut)"
        )
    else:
        lines.append(
            f"ok   ADL: {len(done.adl)} executions, each paid by the fund as the waterfall says"
        )
    return not wrong


def _admin_log(data_dir: Path, lines: list[str]) -> bool:
    admin_lines, problem = admin_log.verify(data_dir / "admin-audit.jsonl")
    if problem is None:
        lines.append(f"ok   admin audit log: {admin_lines} lines, hash chain intact")
    else:
        lines.append(f"FAIL admin audit log: {problem}")
    return problem is None


def _invariants(done: _Replayed, lines: list[str]) -> bool:
    broken = violations(done.engine)
    lines.append("ok   invariants and conservation per asset" if not broken else "FAIL invariants:")
    lines += [f"     {v}" for v in broken]
    lines.append(f"     state digest {digest(done.engine)}")
    return not broken


def main(
    config: Config, data_dir: str | None, storage: str | None = None, shard: str | None = None
) -> int:
    """0: everything holds; 1: something does not; 3: a format this riskd cannot read.

    ``storage``: a PostgreSQL URL (``riskd serve --storage``): audit shard
    ``shard`` there (default: the config's assets, as ``riskd serve``)."""
    where = data_dir if storage is None else redact(storage)
    try:
        if storage is None:
            assert data_dir is not None
            ok, lines = audit(config, Path(data_dir))
        else:
            name = shard or "+".join(sorted(config.assets))
            data = None if data_dir is None else Path(data_dir)
            ok, lines = audit_postgres(config, storage, name, data)
    except codec.UnknownFormat as e:
        print(f"riskd audit of {where}\nFAIL journal: {e}")
        return EXIT_UNKNOWN_FORMAT
    except StorageFault as e:
        print(f"riskd audit of {where}\nFAIL cannot read: {e}")
        return 1
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    from riskd.config import load

    sys.exit(main(load(), sys.argv[1]))
