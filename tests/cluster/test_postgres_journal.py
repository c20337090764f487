"""The PostgreSQL journal keeps SqliteJournal's contract, and fences stale writers."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskd.core.events import FundKind
from riskd.core.insurance_fund import GENESIS as LEDGER_GENESIS
from riskd.core.insurance_fund import LedgerEntry
from riskd.storage import StorageFault, snapshot
from riskd.storage import events as event_files
from riskd.storage import ledger as ledger_files
from riskd.storage.journal import GENESIS, SqliteJournal
from riskd.storage.postgres import (
    PostgresJournal,
    pull_events,
    pull_ledger,
    pull_reports,
    pull_snapshot,
    push_snapshot,
    redact,
)

from .services import Postgres

# Journal records are JSON text (codec.encode): a NUL or a lone surrogate is
# always escaped (PostgreSQL's text refuses a raw NUL; neither encodes as UTF-8).
texts = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=40,
)
records = st.lists(st.lists(texts, min_size=1, max_size=5), max_size=6)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(groups=records)
def test_same_chain_as_sqlite_for_any_groups(
    pg: Postgres, tmp_path_factory: pytest.TempPathFactory, groups: list[list[str]]
) -> None:
    shard = f"h{uuid.uuid4().hex}"  # a fresh shard per example (an id() can be reused)
    lite = SqliteJournal(tmp_path_factory.mktemp("lite") / "journal.sqlite3")
    pgj = PostgresJournal(pg.dsn, shard)
    try:
        start = pgj.verify()[0]
        for g in groups:
            lite.append(g)
            pgj.append(g)
            assert pgj.head == lite.head
        flat = [r for g in groups for r in g]
        assert list(pgj.replay(start)) == flat == list(lite.replay())
        total, broken = pgj.walk()
        assert broken is None and total == start + len(flat)
        assert pgj.hash_at(total) == pgj.head
        assert pgj.hash_at(total + 1) is None
    finally:
        lite.close()
        pgj.close()


def test_reopen_continues_the_chain_under_a_new_epoch(pg: Postgres, shard: str) -> None:
    a = PostgresJournal(pg.dsn, shard)
    assert a.head == GENESIS and a.hash_at(0) == GENESIS
    a.append(["one", "two"])
    head = a.head
    a.close()
    b = PostgresJournal(pg.dsn, shard)
    try:
        assert b.epoch == a.epoch + 1 and b.head == head
        b.append(["three"])
        assert list(b.replay()) == ["one", "two", "three"]
        assert list(b.replay(2)) == ["three"] and b.count() == 3
        assert b.walk() == (3, None)
    finally:
        b.close()


def test_a_writer_whose_epoch_was_taken_over_writes_nothing(pg: Postgres, shard: str) -> None:
    old = PostgresJournal(pg.dsn, shard)
    old.append(["before"])
    new = PostgresJournal(pg.dsn, shard)
    try:
        with pytest.raises(StorageFault, match="another node took it over"):
            old.append(["stale"])
        new.append(["after"])
        assert list(new.replay()) == ["before", "after"]
    finally:
        old.close()
        new.close()


def test_given_epochs_only_grow(pg: Postgres, shard: str) -> None:
    a = PostgresJournal(pg.dsn, shard, epoch=100)
    assert a.epoch == 100
    with pytest.raises(StorageFault, match="owned by epoch 100, this writer is 99"):
        PostgresJournal(pg.dsn, shard, epoch=99)
    a.append(["still mine"])  # the refused open took nothing away
    b = PostgresJournal(pg.dsn, shard, epoch=130)
    try:
        with pytest.raises(StorageFault, match="epoch 130"):
            a.append(["stale"])
        assert list(b.replay()) == ["still mine"]
    finally:
        a.close()
        b.close()


def test_race_no_stale_append_lands_after_the_takeover(pg: Postgres, shard: str) -> None:
    """A appends in a tight loop while B takes over: A's rows stop at B's epoch."""
    a = PostgresJournal(pg.dsn, shard, epoch=1)
    a.append(["a"])
    refused: list[StorageFault] = []
    acked: list[int] = []

    def hammer() -> None:
        while True:
            try:
                a.append(["a"])
            except StorageFault as e:
                refused.append(e)
                return
            acked.append(1)

    t = threading.Thread(target=hammer)
    t.start()
    while len(acked) < 20:
        threading.Event().wait(0.001)
    b = PostgresJournal(pg.dsn, shard, epoch=2)
    taken_at = b.count()  # every A row is in: B's epoch waited for A's append in flight
    b.append(["b"] * 5)
    t.join()
    try:
        assert refused and "another node took it over" in str(refused[0])
        # Every acknowledged A append is there, and nothing of A's after B's takeover.
        assert taken_at == 1 + len(acked)
        assert list(b.replay(taken_at)) == ["b"] * 5
        assert b.walk() == (taken_at + 5, None) == b.verify()
    finally:
        a.close()
        b.close()


def test_snapshots_travel_through_the_database(pg: Postgres, shard: str, tmp_path: Path) -> None:
    owner = PostgresJournal(pg.dsn, shard)
    owner.append(["x", "y"])
    first = tmp_path / "node-a"
    first.mkdir()
    snapshot.write(first, 2, snapshot.dumps({"state": 1}), owner.head)
    push_snapshot(owner, first, 2, owner.head, {"funds": {}, "events": 0}, 10)
    stored = owner.latest_snapshot()
    assert stored is not None and stored[0] == 2
    other = tmp_path / "node-b"
    other.mkdir()
    assert pull_snapshot(owner, other) == 2
    got = snapshot.load_latest(other)
    assert got is not None and got.state == {"state": 1} and got.journal_hash == owner.head
    assert pull_snapshot(owner, other) is None  # already there
    assert (other / "snapshot-00000000000000000002.bin").read_bytes() == (
        first / "snapshot-00000000000000000002.bin"
    ).read_bytes()  # byte for byte, its format version included
    # A damaged stored file is fetched, then skipped by the loader like any other.
    owner.store_snapshot(3, owner.head, b"riskd-snapshot-v4\nnot a snapshot")
    third = tmp_path / "node-c"
    third.mkdir()
    assert pull_snapshot(owner, third) == 3
    assert snapshot.load_latest(third) is None
    owner.close()


def test_unreachable_database_is_a_storage_fault_without_the_password() -> None:
    with pytest.raises(StorageFault) as e:
        PostgresJournal("postgresql://riskd:s3cret@127.0.0.1:1/riskd", "x")
    assert "s3cret" not in str(e.value) and "***" in str(e.value)
    assert redact("host=a password=s3cret") == "host=a password=***"


def test_a_reader_takes_nothing_and_writes_nothing(pg: Postgres, shard: str) -> None:
    owner = PostgresJournal(pg.dsn, shard)
    owner.append(["r"])
    reader = PostgresJournal(pg.dsn, shard, readonly=True)
    try:
        assert list(reader.replay()) == ["r"] and reader.head == owner.head
        with pytest.raises(StorageFault):
            reader.append(["no"])
        owner.append(["still the owner"])
    finally:
        reader.close()
        owner.close()


def test_an_acknowledged_append_is_on_the_synchronous_standby(pg: Postgres, shard: str) -> None:
    import psycopg

    assert pg.standby_port is not None
    j = PostgresJournal(pg.dsn, shard)
    try:
        j.append(["replicated", "twice"])
        # No waiting: the commit returned once the standby had applied it.
        standby = pg.dsn.replace(f":{pg.port}/", f":{pg.standby_port}/")
        with psycopg.connect(standby, autocommit=True) as db:
            assert db.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            rows = db.execute(
                "SELECT record FROM riskd_journal WHERE shard = %s ORDER BY n", (shard,)
            ).fetchall()
        assert rows == [("replicated",), ("twice",)]
    finally:
        j.close()


def _entries(causes: list[str]) -> list[LedgerEntry]:
    out, prev, balance = [], LEDGER_GENESIS, 0
    for n, cause in enumerate(causes, 1):
        balance += 10**17
        e = LedgerEntry(n, n, FundKind.INJECTION, "", cause, 10**17, balance, prev)
        e = dataclasses.replace(e, hash=e.digest())
        out.append(e)
        prev = e.hash
    return out


def test_a_node_pulls_the_stored_ledger_and_events_over_its_own_stale_tail(
    pg: Postgres, shard: str, tmp_path: Path
) -> None:
    """The database's fund ledger and events win over the entries a node's files
    hold past where the histories part (booked by inputs that never became
    durable before it lost the shard); what they share is not fetched again."""
    owner = PostgresJournal(pg.dsn, shard)
    true = _entries([f"c{i}" for i in range(1, 8)])
    events = [(n, "BTC-USDT", f"e{n}".encode()) for n in range(1, 10)]
    owner.store_snapshot(0, GENESIS, b"-", {"USDT": true}, events, keep_events=6)
    assert owner.event_bounds() == (4, 9)  # the newest 6 kept
    node = tmp_path / "node"
    node.mkdir()
    store = ledger_files.LedgerStore(node / ledger_files.FILE)
    store.write([("USDT", _entries(["c1", "c2", "c3", "stale4", "stale5"]))])
    store.close()
    ev = event_files.EventStore(node / event_files.FILE)
    ev.write([*events[:5], (6, "BTC-USDT", b"stale6")], retention=100, full=True)
    ev.close()
    assert pull_ledger(owner, node, "USDT") == 4  # entries 4..7; 1..3 were there
    assert ledger_files.read_page(node / ledger_files.FILE, "USDT", 1, 100) == true
    assert pull_events(owner, node) == 4  # events 6..9
    got = event_files.read_range(node / event_files.FILE, 1, 100)
    assert got == [*events[:5], *events[5:]] and got[5][2] == b"e6"
    assert pull_ledger(owner, node, "USDT") == 0 and pull_events(owner, node) == 0
    owner.close()


def test_daily_reports_are_stored_with_the_snapshot_move_forward_and_reach_a_node(
    pg: Postgres, shard: str, tmp_path: Path
) -> None:
    owner = PostgresJournal(pg.dsn, shard)
    owner.append(["a", "b", "c"])
    day1 = [("USDT", 20000, '{"closing_balance": 5}'), ("USDT", 20001, '{"closing_balance": 7}')]
    owner.store_snapshot(2, owner.head, b"-", reports=day1)
    assert owner.reports() == [(a, d, 2, r) for a, d, r in day1]
    # Day 20001 went on; 20000 is unchanged and keeps the snapshot that wrote it.
    later = [day1[0], ("USDT", 20001, '{"closing_balance": 9}'), ("BTC", 20001, "{}")]
    owner.store_snapshot(3, owner.head, b"-", reports=later)
    assert owner.reports("USDT") == [
        ("USDT", 20000, 2, '{"closing_balance": 5}'),
        ("USDT", 20001, 3, '{"closing_balance": 9}'),
    ]
    # An older snapshot stored late does not take them back.
    owner.store_snapshot(1, owner.head, b"-", reports=day1)
    assert owner.reports("USDT")[1][3] == '{"closing_balance": 9}'
    # A fenced writer stores none: the snapshot's transaction is refused whole.
    newer = PostgresJournal(pg.dsn, shard)
    with pytest.raises(StorageFault):
        owner.store_snapshot(4, owner.head, b"-", reports=[("USDT", 20001, "stale")])
    assert newer.reports("USDT")[1][3] == '{"closing_balance": 9}'
    # A node taking the shard gets them into its ledger file (read offline).
    node = tmp_path / "node"
    node.mkdir()
    store = ledger_files.LedgerStore(node / ledger_files.FILE)
    store.write_reports([("USDT", 19999, "stale local")])
    store.close()
    assert pull_reports(newer, node, "USDT") == 2
    db = sqlite3.connect(node / ledger_files.FILE)
    rows = db.execute("SELECT asset, day, report FROM reports ORDER BY day").fetchall()
    db.close()
    assert rows == [
        ("USDT", 20000, '{"closing_balance": 5}'),
        ("USDT", 20001, '{"closing_balance": 9}'),
    ]
    owner.close()
    newer.close()


def test_the_owners_snapshot_writer_is_fenced_like_the_owner(pg: Postgres, shard: str) -> None:
    owner = PostgresJournal(pg.dsn, shard)
    owner.append(["r1"])
    writer = PostgresJournal(pg.dsn, shard, owner.epoch, join=True)  # takes nothing
    try:
        writer.store_snapshot(1, owner.head, b"file")
        owner.append(["r2"])  # the owner still owns the shard
        assert [n for n, _, _ in writer.rows(0, 1)] == [1]
        taker = PostgresJournal(pg.dsn, shard)
        with pytest.raises(StorageFault) as e:
            writer.store_snapshot(2, owner.head, b"late")
        assert "newer owner" in str(e.value)
        stored = taker.latest_snapshot()
        assert stored is not None and stored[0] == 1
        taker.close()
    finally:
        writer.close()
        owner.close()


def test_replay_checks_the_chain_of_what_it_reads(pg: Postgres, shard: str) -> None:
    import psycopg

    from riskd.storage.journal import JournalCorrupt

    owner = PostgresJournal(pg.dsn, shard)
    owner.append(["r1", "r2", "r3", "r4"])
    assert list(owner.replay(2)) == ["r3", "r4"]
    with psycopg.connect(pg.dsn, autocommit=True) as db:
        db.execute("UPDATE riskd_journal SET record = 'R3' WHERE shard = %s AND n = 3", (shard,))
    assert list(owner.replay(3)) == ["r4"]  # after the change: its hash still chains
    with pytest.raises(JournalCorrupt, match="record 3: hash chain broken"):
        list(owner.replay(1))
    assert owner.walk() == (3, "record 3: hash chain broken (the record or its hash changed)")
    with psycopg.connect(pg.dsn, autocommit=True) as db:
        db.execute("DELETE FROM riskd_journal WHERE shard = %s AND n = 3", (shard,))
    with pytest.raises(JournalCorrupt, match="record 3 is missing"):
        list(owner.replay(2))
    owner.close()
