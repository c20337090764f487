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

Prints a short report; exits 0 when everything holds, 1 otherwise, and 3
(as ``riskd serve``) for a journal record of a format it does not know.
"""

from __future__ import annotations

import sqlite3
import sys
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
from riskd.storage import admin_log, codec, ledger, records, snapshot
from riskd.storage.journal import chain, hash_at, head_problem, wal_problem
from riskd.storage.records import EngineTarget, Record

__all__ = ["audit", "replay_record", "EXIT_UNKNOWN_FORMAT"]

#: A journal record of a format this riskd does not know (as ``riskd serve``).
EXIT_UNKNOWN_FORMAT = 3

_PAYOUTS = (FundKind.SHORTFALL, FundKind.BACKSTOP_MARGIN)


def replay_record(engine: Engine, record: Record) -> list[Effect]:
    """Apply one journal record to a pure engine (the daemon's rules); its effects."""
    return records.apply(record, EngineTarget(engine))


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
    engine = Engine(config.markets, config.funds)
    head, n, ok = GENESIS, 0, True
    at_snapshot = GENESIS if snap is not None and snap.records == 0 else None
    settled: set[str] = set()
    adl: list[AdlEvent] = []
    try:
        for n, record, stored in db.execute("SELECT n, record, hash FROM journal ORDER BY n"):
            head = chain(head, record)
            if head != stored:
                return False, [*lines, f"FAIL journal hash chain broken at record {n}"]
            if snap is not None and n == snap.records:
                at_snapshot = head
            try:
                decoded = codec.decode(record)
            except codec.UnknownFormat as unknown:
                raise codec.UnknownFormat(unknown.version, f"{path}: record {n}: ") from None
            for e in replay_record(engine, decoded):
                if isinstance(e, LiquidationSettled):
                    settled.add(f"liq:{e.market}:{e.liquidation_id}")
                elif isinstance(e, AdlEvent):
                    adl.append(e)
    except (sqlite3.DatabaseError, codec.BadRecord, ValueError, KeyError, TypeError) as e:
        return False, [*lines, f"FAIL journal unreadable at record {n}: {e}"]
    finally:
        db.close()
    lines.append(f"ok   journal: {n} records, hash chain intact")
    if snap is not None:
        disagree = snapshot.mismatch(snap, path, n, at_snapshot)
        ok &= disagree is None
        if disagree:
            lines.append(f"FAIL snapshot: {disagree}")
        else:
            lines.append(f"ok   snapshot {snap.path.name}: its journal position is in the journal")
    for asset, fund in engine.funds.items():
        prev, total, problems = GENESIS, 0, []
        for entry in fund.ledger:
            if entry.prev != prev or entry.hash != entry.digest():
                problems.append(f"entry {entry.sequence} breaks the ledger chain")
            prev = entry.hash
            total += entry.amount
            if entry.kind in _PAYOUTS and entry.cause not in settled:
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
    file_ok, file_lines = ledger.audit_file(data_dir / ledger.FILE, engine.funds)
    ok &= file_ok
    lines += file_lines
    # The waterfall on every ADL execution: the fund paid exactly what the execution
    # says it paid (up to its limit, the rest deleveraged), and the counterparties gave
    # up no more than the uncovered deficit plus tick rounding (overshoot >= 0).
    paid: dict[str, int] = {}
    for f in engine.funds.values():
        for entry in f.ledger:
            if entry.kind is FundKind.SHORTFALL:
                paid[entry.cause] = paid.get(entry.cause, 0) - entry.amount
    wrong = [
        e
        for e in adl
        if paid.get(f"liq:{e.market}:{e.liquidation_id}", 0) != e.fund_paid
        or e.overshoot < 0
        or e.overshoot != e.haircut + e.fund_paid - e.deficit
    ]
    ok &= not wrong
    if wrong:
        lines.append(
            f"FAIL ADL: {len(wrong)} executions break the waterfall (fund paid or haircut)"
        )
    else:
        lines.append(
            f"ok   ADL: {len(adl)} executions, each paid by the fund as the waterfall says"
        )
    admin_lines, problem = admin_log.verify(data_dir / "admin-audit.jsonl")
    ok &= problem is None
    if problem is None:
        lines.append(f"ok   admin audit log: {admin_lines} lines, hash chain intact")
    else:
        lines.append(f"FAIL admin audit log: {problem}")
    broken = violations(engine)
    ok &= not broken
    lines.append("ok   invariants and conservation per asset" if not broken else "FAIL invariants:")
    lines += [f"     {v}" for v in broken]
    lines.append(f"     state digest {digest(engine)}")
    return ok, lines


def main(config: Config, data_dir: str) -> int:
    """0: everything holds; 1: something does not; 3: a format this riskd cannot read."""
    try:
        ok, lines = audit(config, Path(data_dir))
    except codec.UnknownFormat as e:
        print(f"riskd audit of {data_dir}\nFAIL journal: {e}")
        return EXIT_UNKNOWN_FORMAT
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    from riskd.config import load

    sys.exit(main(load(), sys.argv[1]))
