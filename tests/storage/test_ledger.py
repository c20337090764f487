"""Fund ledgers on disk with a bounded memory: the core's Ledger, ledger.sqlite3, the daemon."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pickle
import signal
import sqlite3
import urllib.request
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.audit import audit
from riskd.config import default_toml, load
from riskd.core import Engine, Input
from riskd.core.events import FundInjection, FundKind
from riskd.core.insurance_fund import GENESIS, InsuranceFund, LedgerEntry
from riskd.core.ledger import Ledger, NotInMemory
from riskd.storage import ledger as store_mod
from riskd.v1 import admin_pb2, admin_pb2_grpc, query_pb2, query_pb2_grpc

from ..api.conftest import Daemon, start_daemon
from ..api.scenario import crash_scenario, run_engine
from ..api.test_durability import pure_digest, state, stream_all


def _fund(amounts: list[int]) -> InsuranceFund:
    f = InsuranceFund("USDT")
    for i, a in enumerate(amounts):
        f.inject(a, f"seed-{i}", i * 1000)
    return f


# --- the core's Ledger ------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    amounts=st.lists(st.integers(1, 10**12), min_size=0, max_size=60),
    keep=st.integers(1, 8),
    drains=st.sets(st.integers(0, 59)),
)
def test_a_bounded_ledger_numbers_and_chains_like_the_full_one(
    amounts: list[int], keep: int, drains: set[int]
) -> None:
    full = InsuranceFund("USDT")
    bounded = InsuranceFund("USDT")
    bounded.ledger = Ledger(keep)
    saved: list[LedgerEntry] = []
    for i, a in enumerate(amounts):
        full.inject(a, f"seed-{i}", i)
        bounded.inject(a, f"seed-{i}", i)
        if i in drains:
            saved += bounded.ledger.take_unsaved()
    saved += bounded.ledger.take_unsaved()
    # Every entry reaches the writer exactly once, in order, with the same hashes.
    assert saved == list(full.ledger)
    assert len(bounded.ledger) == len(full.ledger) == len(amounts)
    assert bounded.ledger.recent() == list(full.ledger)[-keep:]
    assert bounded.ledger[-1:] == full.ledger[-1:]
    assert bounded.ledger.head == (full.ledger[-1].hash if amounts else "")
    assert bounded.ledger.first_in_memory == max(1, len(amounts) - keep + 1)
    if len(amounts) > keep:
        with pytest.raises(NotInMemory):
            bounded.ledger[0]
        with pytest.raises(NotInMemory):
            bounded.ledger[0:2]


def test_pickling_keeps_the_count_and_head_not_the_unsaved_entries() -> None:
    f = _fund([5, 6, 7, 8])
    f.ledger = f.ledger.rebound(2)
    assert f.ledger.take_unsaved() == []  # rebound: what it holds is taken as written
    f.inject(9, "more", 9)
    back = pickle.loads(pickle.dumps(f))
    assert len(back.ledger) == 5 and back.ledger.head == f.ledger.head
    assert back.ledger.recent() == f.ledger.recent() and back.ledger.take_unsaved() == []
    assert f.ledger.take_unsaved()  # the original still owes its writer


def test_an_unbounded_ledger_is_the_list_it_was() -> None:
    f = _fund([1, 2, 3])
    assert f.ledger == list(f.ledger) and f.ledger[1:] == list(f.ledger)[1:]
    assert InsuranceFund("X").ledger == []
    assert f.ledger.take_unsaved() == []  # nobody writes it anywhere


# --- ledger.sqlite3 --------------------------------------------------------------------


def test_the_file_pages_verifies_and_is_cut_back_to_a_snapshot(tmp_path: Path) -> None:
    f = _fund(list(range(1, 21)))
    entries = list(f.ledger)
    path = tmp_path / store_mod.FILE
    store = store_mod.LedgerStore(path)
    store.write([("USDT", entries[:12])])
    store.write([("USDT", entries[12:])], full=True)
    assert store_mod.read_page(path, "USDT", 5, 3) == entries[4:7]
    assert store_mod.read_page(path, "USDT", 19, 10) == entries[18:]
    assert store_mod.read_page(path, "BTC", 1, 10) == []
    assert store.verify("USDT", f.ledger) is None
    assert store.verify("USDT", f.ledger.rebound(4)) is None  # only the kept tail is read
    # A snapshot at entry 15: the file keeps 15 (the rest came from inputs a
    # crash may have lost; the replay books them again).
    snap = InsuranceFund("USDT")
    snap.ledger = Ledger(3, entries[:15])
    assert store_mod.agree(store, {"USDT": snap}) is None
    assert store_mod.count(path, "USDT") == 15
    # A file that does not reach the snapshot's head is named; the caller ignores the snapshot.
    snap.ledger = Ledger(3, [*entries[:15], entries[15]])
    why = store_mod.agree(store, {"USDT": snap})
    assert why is not None and "16" in why and str(path) in why
    store.close()


def test_a_changed_entry_breaks_the_chain(tmp_path: Path) -> None:
    f = _fund([10, 20, 30])
    path = tmp_path / store_mod.FILE
    store = store_mod.LedgerStore(path)
    store.write([("USDT", list(f.ledger))], full=True)
    db = sqlite3.connect(path)
    db.execute("UPDATE ledger SET amount = 21 WHERE sequence = 2")
    db.commit()
    db.close()
    assert store.verify("USDT", f.ledger) == "fund USDT: entry 2 breaks the hash chain"
    # A snapshot keeping only entry 3 reads entries 2 and 3: the break shows there too.
    assert store.verify("USDT", f.ledger.rebound(1)) == "fund USDT: entry 2 breaks the hash chain"
    store.close()


def test_a_write_that_fails_is_a_storage_fault(tmp_path: Path) -> None:
    from riskd.storage import StorageFault

    store = store_mod.LedgerStore(tmp_path / store_mod.FILE)
    e = LedgerEntry(1, 0, FundKind.INJECTION, "", "x", 5, 5, GENESIS)
    e2 = LedgerEntry(1, 0, FundKind.INJECTION, "", "y", 5, 5, GENESIS)
    store.write([("USDT", [e])])
    with pytest.raises(StorageFault) as fault:
        store.write([("USDT", [e2])])  # the same entry number twice: never overwritten
    assert fault.value.what == "ledger"
    store.close()


def _chain(amounts: list[int], ts: int = 0) -> list[LedgerEntry]:
    """Entries booking ``amounts`` in order, chained (balances as they add up)."""
    out, prev, balance = [], GENESIS, 0
    for n, amount in enumerate(amounts, 1):
        balance += amount
        e = LedgerEntry(n, ts + n, FundKind.TRADING_FEE, "BTC-USDT", f"c{n}", amount, balance, prev)
        e = dataclasses.replace(e, hash=e.digest())
        out.append(e)
        prev = e.hash
    return out


INT64 = 2**63


@settings(max_examples=40, deadline=None)
@given(
    amounts=st.lists(
        st.one_of(
            st.integers(-(2**200), 2**200),
            st.integers(INT64 - 3, INT64 + 3),
            st.integers(-INT64 - 3, -INT64 + 3),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_every_amount_is_stored_exactly_at_any_size(amounts: list[int]) -> None:
    import tempfile

    entries = _chain(amounts)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / store_mod.FILE
        store = store_mod.LedgerStore(path)
        store.write([("USDT", entries)], full=True)
        assert store.verify("USDT", Ledger(None, entries)) is None
        store.close()
        # Read back by a fresh connection, as ListFundLedger and a restart do.
        assert store_mod.read_page(path, "USDT", 1, 100) == entries


def test_a_fund_past_int64_is_written_by_the_daemons_writer_and_audited(tmp_path: Path) -> None:
    """Defence in depth: the supply cap (riskd.core.units.SUPPLY_CAP) keeps the
    API's inputs from getting a fund here, but credits are never refused, so
    the file stays exact past 2**63 anyway."""
    from riskd.core.events import FundCredit
    from riskd.core.units import SUPPLY_CAP

    f = InsuranceFund("USDT")
    f.inject(SUPPLY_CAP, "seed", 0)
    fee = INT64 + 4 - SUPPLY_CAP  # one credit, itself within int64
    f.credit(
        FundCredit(
            asset="USDT", market="BTC-USDT", kind=FundKind.TRADING_FEE, amount=fee, cause="f", ts=1
        )
    )
    entries = list(f.ledger)
    assert entries[-1].balance_after == INT64 + 4
    path = tmp_path / store_mod.FILE
    writer = store_mod.LedgerWriter(path)
    faults: list[object] = []
    writer.on_fault = faults.append

    async def go() -> None:
        async with trio.open_nursery() as n:
            await n.start(writer.run)
            await writer.submit("USDT", entries)
            await writer.sync([f])
            n.cancel_scope.cancel()

    trio.run(go)
    assert not faults
    assert store_mod.read_page(path, "USDT", 1, 10) == entries
    ok, lines = store_mod.audit_file(path, {"USDT": f})
    assert ok, lines
    # The daily report's sums too: JSON keeps any integer.
    db = sqlite3.connect(path)
    (report,) = db.execute("SELECT report FROM reports WHERE asset = 'USDT'").fetchone()
    (stored,) = db.execute("SELECT typeof(balance_after) FROM ledger WHERE sequence = 2").fetchone()
    db.close()
    assert json.loads(report)["closing_balance"] == INT64 + 4 and stored == "blob"


def test_a_file_written_before_reads_and_grows_past_int64(tmp_path: Path) -> None:
    """A ledger.sqlite3 of an earlier riskd (plain INTEGER rows, the same schema)
    is read as it is, and takes entries of any size after them."""
    entries = _chain([7, INT64 - 8, 10**25])
    path = tmp_path / store_mod.FILE
    old = sqlite3.connect(path)
    old.executescript(store_mod._SCHEMA)
    rows = [
        ("USDT", e.sequence, e.ts, e.kind.value, e.market, e.cause, e.amount, e.balance_after,
         e.prev, e.hash)
        for e in entries[:2]
    ]  # fmt: skip
    old.executemany("INSERT INTO ledger VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    old.commit()
    old.close()
    store = store_mod.LedgerStore(path)
    assert store.verify("USDT", Ledger(None, entries[:2])) is None
    store.write([("USDT", entries[2:])], full=True)
    assert store.verify("USDT", Ledger(None, entries)) is None
    store.close()
    assert store_mod.read_page(path, "USDT", 1, 10) == entries


def test_a_value_sqlite_cannot_bind_is_a_storage_fault_not_a_crash(tmp_path: Path) -> None:
    from riskd.storage import StorageFault

    bad = dataclasses.replace(_chain([1])[0], ts=2**64)  # no ledger column takes this
    store = store_mod.LedgerStore(tmp_path / store_mod.FILE)
    with pytest.raises(StorageFault) as fault:
        store.write([("USDT", [bad])])
    assert fault.value.what == "ledger" and "int" in fault.value.cause
    store.close()
    # The writer task hands it to the fail-stop path (one line, exit 4) and stops.
    writer = store_mod.LedgerWriter(tmp_path / "other.sqlite3")
    faults: list[StorageFault] = []
    writer.on_fault = faults.append

    async def go() -> None:
        async with trio.open_nursery() as n:
            await n.start(writer.run)
            await writer.submit("USDT", [bad])

    with pytest.raises(BaseExceptionGroup) as stopped:
        trio.run(go)
    assert stopped.group_contains(StorageFault)
    assert [f.what for f in faults] == ["ledger"]


def test_a_damaged_amount_makes_the_snapshot_ignored_and_the_audit_fail(tmp_path: Path) -> None:
    entries = _chain([3, 4])
    path = tmp_path / store_mod.FILE
    store = store_mod.LedgerStore(path)
    store.write([("USDT", entries)], full=True)
    db = sqlite3.connect(path)
    db.execute("UPDATE ledger SET amount = 4.5 WHERE sequence = 2")
    db.commit()
    db.close()
    why = store.verify("USDT", Ledger(None, entries))
    assert why is not None and why.startswith("fund USDT: unreadable:")
    store.close()
    f = InsuranceFund("USDT")
    f.ledger = Ledger(None, entries)
    ok, lines = store_mod.audit_file(path, {"USDT": f})
    assert not ok and "unreadable" in lines[0]


# --- the daemon -----------------------------------------------------------------------


def _config(tmp_path: Path, memory: int, snapshot_seconds: float = 300) -> Path:
    config = tmp_path / "riskd.toml"
    toml = default_toml().replace("fund_ledger_memory = 10000", f"fund_ledger_memory = {memory}")
    toml = toml.replace("snapshot_seconds = 300", f"snapshot_seconds = {snapshot_seconds}")
    config.write_text(toml)
    return config


def _ledger(d: Daemon, page_size: int = 3) -> list[query_pb2.LedgerEntry]:
    q = query_pb2_grpc.QueryServiceStub(d.channel())
    out: list[query_pb2.LedgerEntry] = []
    token = 0
    while True:
        page = q.ListFundLedger(
            query_pb2.ListFundLedgerRequest(asset="USDT", page_size=page_size, page_token=token)
        )
        out += page.entries
        if not page.next_page_token:
            return out
        token = page.next_page_token


def _expected(inputs: list) -> list[tuple[int, str, int, int]]:
    cfg = load()
    engine = run_engine(inputs, Engine(cfg.markets, cfg.funds))
    return [(e.sequence, e.hash, e.amount, e.balance_after) for e in engine.funds["USDT"].ledger]


SEEDS = [FundInjection("USDT", 100_000 * (i + 1), f"seed-{i}") for i in range(6)]


def _seed(d: Daemon) -> list[FundInjection]:
    """Fund injections through AdminService; as the pure engine must be given them
    to book the same entries: stamped when riskd took each (its clock)."""
    admin = admin_pb2_grpc.AdminServiceStub(d.channel())
    for i in SEEDS:
        admin.InjectFund(admin_pb2.InjectFundRequest(asset=i.asset, amount=i.amount, cause=i.cause))
    booked = _ledger(d)[: len(SEEDS)]
    assert all(e.timestamp_ms > 0 for e in booked)
    return [dataclasses.replace(i, ts=e.timestamp_ms) for i, e in zip(SEEDS, booked, strict=True)]


def _rows(entries: list[query_pb2.LedgerEntry]) -> list[tuple[int, str, int, int]]:
    return [(e.sequence, e.hash, e.amount, e.balance_after) for e in entries]


def _serve_and_stop(tmp_path: Path, gateway: str) -> tuple[list[Input], Path]:
    """The seeds and the crash scenario through a daemon that keeps 2 entries in
    memory, stopped cleanly; the seeds as stamped and the scenario, and the config file."""
    inputs = crash_scenario()
    config = _config(tmp_path, memory=2)
    d = start_daemon(tmp_path, "--config", str(config))
    try:
        seeds = _seed(d)
        asyncio.run(stream_all(d, inputs, gateway))
    finally:
        assert d.stop() == 0
    return [*seeds, *inputs], config


def _restart_holds_every_entry(tmp_path: Path, config: Path, inputs: list[Input]) -> Daemon:
    """Restart; the ledger pages every entry and the state is the pure engine's."""
    again = start_daemon(tmp_path, "--config", str(config))
    try:
        assert _rows(_ledger(again)) == _expected(inputs)
        assert state(again).digest == pure_digest(inputs)
    finally:
        assert again.stop() == 0
    return again


def test_the_daemon_keeps_few_entries_in_memory_and_pages_every_one_from_disk(
    tmp_path: Path,
) -> None:
    inputs = crash_scenario()
    config = _config(tmp_path, memory=2)
    d = start_daemon(tmp_path, "--config", str(config))
    try:
        seeds = _seed(d)
        expected = _expected([*seeds, *inputs])
        assert len(expected) > 4  # more than the daemon keeps in memory
        asyncio.run(stream_all(d, inputs, "gw-ledger"))
        for size in (1, 2, 3, 1000):
            assert _rows(_ledger(d, size)) == expected
        # The ledger writer's queue is watched like every mailbox.
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics").read()
        assert b'riskd_actor_mailbox_capacity_messages{asset="",kind="ledger",market=""}' in scrape
    finally:
        assert d.stop() == 0
    # The final snapshot carries two entries; the file every one, chained.
    assert store_mod.count(tmp_path / "data" / store_mod.FILE, "USDT") == len(expected)
    ok, lines = audit(load(), tmp_path / "data")
    assert ok, lines
    again = start_daemon(tmp_path, "--config", str(config))
    try:
        assert _rows(_ledger(again)) == expected
        assert state(again).digest == pure_digest([*seeds, *inputs])
    finally:
        assert again.stop() == 0


def test_after_kill_9_the_file_is_cut_back_and_the_replay_books_the_rest(
    tmp_path: Path,
) -> None:
    inputs = crash_scenario()
    first = inputs[:9]
    config = _config(tmp_path, memory=2)
    d = start_daemon(tmp_path, "--config", str(config))
    seeds = _seed(d)
    asyncio.run(stream_all(d, first, "gw-kill"))
    d.process.send_signal(signal.SIGTERM)  # a clean stop: a snapshot at 9 inputs
    assert d.process.wait(20) == 0
    d = start_daemon(tmp_path, "--config", str(config))
    asyncio.run(stream_all(d, inputs, "gw-kill"))
    d.process.send_signal(signal.SIGKILL)
    d.process.wait(10)
    _restart_holds_every_entry(tmp_path, config, [*seeds, *inputs])


def test_a_lost_ledger_file_costs_a_full_replay_not_the_ledger(tmp_path: Path) -> None:
    inputs, config = _serve_and_stop(tmp_path, "gw-lost")
    data = tmp_path / "data"
    for p in data.glob(store_mod.FILE + "*"):
        p.unlink()
    again = _restart_holds_every_entry(tmp_path, config, inputs)
    lines = [json.loads(x) for x in again.log.read_text().splitlines() if x.startswith("{")]
    ignored = [x for x in lines if x.get("event") == "snapshot_ignored"]
    assert ignored and "0 entries on disk" in ignored[0]["reason"], lines
    recovered = next(x for x in lines if x.get("event") == "riskd_recovered")
    assert recovered["snapshot_records"] == 0


def test_the_audit_checks_the_file_against_the_journal(tmp_path: Path) -> None:
    _serve_and_stop(tmp_path, "gw-audit")
    data = tmp_path / "data"
    ok, lines = audit(load(), data)
    assert ok and any(x.startswith(f"ok   {store_mod.FILE} fund USDT: 8 of 8") for x in lines)
    db = sqlite3.connect(data / store_mod.FILE)
    db.execute("UPDATE ledger SET cause = 'edited' WHERE asset = 'USDT' AND sequence = 3")
    db.commit()
    db.close()
    ok, lines = audit(load(), data)
    assert not ok
    assert f"FAIL {store_mod.FILE} fund USDT: entry 3 differs from the journal's replay" in lines
