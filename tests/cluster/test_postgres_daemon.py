"""riskd serve --storage postgresql://...: acknowledged means durable in PostgreSQL,
and another node (another data directory) rebuilds the same state from it."""

from __future__ import annotations

import asyncio
import datetime
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from riskd.config import default_toml
from riskd.storage.postgres import PostgresJournal
from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from riskd_client.gateway import Gateway

from ..api.conftest import Daemon, start_daemon
from ..api.scenario import crash_scenario, send
from ..api.test_durability import _recovered, pure_digest, state, stream_all
from .services import Postgres, wait_for


def _node(tmp: Path, name: str, pg: Postgres, shard: str, *extra: str) -> Daemon:
    return start_daemon(
        tmp, "--data-dir", str(tmp / name), "--storage", pg.dsn, "--shard", shard, *extra
    )


def _records(pg: Postgres, shard: str) -> list[str]:
    j = PostgresJournal(pg.dsn, shard, readonly=True)
    try:
        return list(j.replay())
    finally:
        j.close()


def test_kill9_then_another_node_serves_the_same_state(
    pg: Postgres, shard: str, tmp_path: Path
) -> None:
    inputs = crash_scenario()
    a = _node(tmp_path, "node-a", pg, shard)
    try:

        async def until_killed() -> int:
            gw = Gateway(a.target, "gw-pg", epoch=1, batch_size=2, window=8)
            await gw.start()
            await gw.wait_connected()
            for x in inputs[: len(inputs) // 2]:
                send(gw, x)
            await gw.flush()
            a.process.send_signal(signal.SIGKILL)
            acked = gw.acked_sequence
            await gw.close()
            return acked

        acked = asyncio.run(until_killed())
        a.process.wait(10)
    finally:
        if a.process.poll() is None:
            a.process.kill()
    assert acked == len(inputs) // 2
    # Another node, its own empty data directory: everything comes from PostgreSQL.
    b = _node(tmp_path, "node-b", pg, shard)
    try:
        assert _recovered(b)["snapshot"] == 0

        async def resumed() -> int:
            async with Gateway(b.target, "gw-pg", epoch=1) as gw:
                return await gw.wait_connected()

        assert asyncio.run(resumed()) == acked  # resume by acknowledged sequence
        gw = asyncio.run(stream_all(b, inputs, "gw-pg", batch=2))
        assert gw.acked_sequence == len(inputs) and gw.rejections == []
        final = state(b)
        assert final.violations == [] and final.digest == pure_digest(inputs)
    finally:
        assert b.stop() == 0
    # A clean stop stored its final snapshot in the database too, with the fund
    # ledger entries it covers: a third node, its data directory empty, fetches
    # both and replays nothing.
    c = _node(tmp_path, "node-c", pg, shard)
    try:
        assert list((tmp_path / "node-c").glob("snapshot-*.bin"))
        rec = _recovered(c)
        assert rec["snapshot"] == len(_records(pg, shard)) and rec["replayed"] == 0
        assert state(c).digest == pure_digest(inputs)
    finally:
        assert c.stop() == 0
    # Node b again (its ledger file reaches its snapshot): nothing to replay.
    b = _node(tmp_path, "node-b", pg, shard)
    try:
        rec = _recovered(b)
        assert rec["snapshot"] > 0 and rec["replayed"] == 0
        assert state(b).digest == pure_digest(inputs)
    finally:
        assert b.stop() == 0


def _events_until(d: Daemon, marker: str, start: int = 1) -> list[events_pb2.Event]:
    """Events from ``start`` up to the fund flow whose cause is ``marker``."""
    stub = events_pb2_grpc.EventServiceStub(d.channel())
    out = []
    stream = stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=start), timeout=30)
    try:
        for item in stream:
            out.append(item.event)
            if item.event.HasField("fund_flow") and item.event.fund_flow.cause == marker:
                return out
    finally:
        stream.cancel()
    raise AssertionError(f"no event {marker}")


def _mark(d: Daemon, cause: str) -> None:
    """A fund injection: its event is the newest once the call returns (durable)."""
    admin = admin_pb2_grpc.AdminServiceStub(d.channel())
    admin.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=1, cause=cause))


def _ledger(d: Daemon) -> list[Any]:
    q = query_pb2_grpc.QueryServiceStub(d.channel())
    req = query_pb2.ListFundLedgerRequest(asset="USDT", page_size=1000)
    return list(q.ListFundLedger(req).entries)


def _reports(d: Daemon, days: list[int]) -> list[tuple[int, int, int, int, dict, dict]]:
    """The daemon's daily reports of USDT for ``days`` (days since the epoch)."""
    q = query_pb2_grpc.QueryServiceStub(d.channel())
    out = []
    for day in days:
        text = datetime.date.fromordinal(EPOCH_ORDINAL + day).isoformat()
        r = q.GetFundDailyReport(query_pb2.GetFundDailyReportRequest(asset="USDT", day=text)).report
        out.append(
            (r.opening_balance, r.closing_balance, r.liquidation_volume,
             dict(r.inflow_by_kind), dict(r.outflow_by_kind), day)
        )  # fmt: skip
    return out


EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


def _stored_reports(pg: Postgres, shard: str) -> list[tuple[int, int, int, dict, dict, int]]:
    """The reports stored in the database, as :func:`_reports` shows them."""
    j = PostgresJournal(pg.dsn, shard, readonly=True)
    try:
        rows = j.reports("USDT")
    finally:
        j.close()
    out = []
    for _, day, _, text in rows:
        r = json.loads(text)
        out.append(
            (r["opening_balance"], r["closing_balance"], r["liquidation_volume"],
             r["inflow_by_kind"], r["outflow_by_kind"], day)
        )  # fmt: skip
    return out


def test_a_takeover_restores_the_periodic_snapshot_and_serves_the_old_owners_events(
    pg: Postgres, shard: str, tmp_path: Path
) -> None:
    """Periodic snapshots, fund ledger entries and events go to the database, so a
    node with an empty data directory replays only the journal's tail, pages the
    whole fund ledger, and a subscriber resumes on it where it stopped."""
    config = tmp_path / "riskd.toml"
    config.write_text(default_toml().replace("snapshot_seconds = 300", "snapshot_seconds = 0.2"))
    inputs = crash_scenario()
    half = len(inputs) // 2
    a = _node(tmp_path, "node-a", pg, shard, "--config", str(config))
    try:
        asyncio.run(stream_all(a, inputs[:half], "gw-snap"))
        _mark(a, "half")
        count = len(_records(pg, shard))
        j = PostgresJournal(pg.dsn, shard, readonly=True)
        try:
            wait_for(lambda: (j.latest_snapshot() or (0,))[0] == count, "a stored snapshot")
        finally:
            j.close()
        asyncio.run(stream_all(a, inputs, "gw-snap"))
        _mark(a, "end")
        before = _events_until(a, "end")
        read = _events_until(a, "half")  # a subscriber that got this far
        ledger = _ledger(a)
        digest = state(a).digest
        # The funds' daily reports go to the database with each snapshot.
        total = len(_records(pg, shard))
        j = PostgresJournal(pg.dsn, shard, readonly=True)
        try:
            wait_for(lambda: (j.latest_snapshot() or (0,))[0] == total, "the final snapshot")
        finally:
            j.close()
        stored = _stored_reports(pg, shard)
        assert stored and stored == _reports(a, [r[-1] for r in stored])
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
    finally:
        if a.process.poll() is None:
            a.process.kill()
    b = _node(tmp_path, "node-b", pg, shard, "--config", str(config))
    try:
        rec = _recovered(b)
        assert rec["snapshot"] >= count and rec["replayed"] < len(_records(pg, shard))
        assert state(b).digest == digest
        assert _ledger(b) == ledger
        # The same events, numbered alike: those before the snapshot from the
        # database, the rest rebuilt from the journal.
        assert _events_until(b, "end") == before
        resumed = _events_until(b, "end", start=read[-1].sequence + 1)
        assert read + resumed == before
        # The new owner's reports are the ones its predecessor stored, and its data
        # directory holds them before it wrote a snapshot of its own.
        assert _reports(b, [r[-1] for r in stored]) == stored
        file = sqlite3.connect(tmp_path / "node-b" / "ledger.sqlite3")
        assert file.execute("SELECT COUNT(*) FROM reports").fetchone() == (len(stored),)
        file.close()
    finally:
        assert b.stop() == 0
    # riskd audit verifies the shard in the database offline.
    audit = [sys.executable, "-m", "riskd.cli", "audit", "--config", str(config),
             "--storage", pg.dsn, "--shard", shard]  # fmt: skip
    done = subprocess.run(audit, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hash chain intact" in done.stdout and "stored ledger fund USDT" in done.stdout
    assert f"state digest {digest}" in done.stdout
    assert f"ok   stored daily reports fund USDT: {len(stored)} days" in done.stdout
    day = stored[-1][-1]
    with psycopg.connect(pg.dsn, autocommit=True) as db:
        db.execute(
            "UPDATE riskd_report SET report = replace(report, '\"liquidation_volume\": ',"
            " '\"liquidation_volume\": 1') WHERE shard = %s AND day = %s",
            (shard, day),
        )
    done = subprocess.run(audit, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout
    assert f"FAIL stored daily reports fund USDT: day {day} differs" in done.stdout
    with psycopg.connect(pg.dsn, autocommit=True) as db:
        db.execute(
            "UPDATE riskd_journal SET record = record || ' ' WHERE shard = %s AND n = 3", (shard,)
        )
    done = subprocess.run(audit, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "hash chain broken at record 3" in done.stdout


def test_a_fenced_daemon_stops_with_exit_4_and_acknowledges_nothing_more(
    pg: Postgres, shard: str, tmp_path: Path
) -> None:
    inputs = crash_scenario()
    a = _node(tmp_path, "node-a", pg, shard)
    try:
        asyncio.run(stream_all(a, inputs[:5], "gw-fence"))
        # Another writer takes the shard (what a new owner does when it opens it).
        taker = PostgresJournal(pg.dsn, shard)
        count = taker.count()

        async def more() -> int:
            gw = Gateway(a.target, "gw-fence", epoch=1, batch_size=1)
            await gw.start()
            await gw.wait_connected()
            before = gw.acked_sequence
            for x in inputs[5:]:
                send(gw, x)
            await asyncio.get_running_loop().run_in_executor(None, a.process.wait, 30)
            await gw.close()
            return gw.acked_sequence - before

        assert asyncio.run(more()) == 0
        assert a.process.wait(30) == 4
        assert taker.count() == count  # the stale daemon wrote nothing
        assert "another node took it over" in a.log.read_text()
        taker.close()
    finally:
        if a.process.poll() is None:
            a.process.kill()


def test_storage_flags_are_checked_before_anything_starts(tmp_path: Path) -> None:
    for extra, why in (
        (["--shard", "X"], "--shard needs --storage"),
        (["--storage", "mysql://x"], "must be a postgresql:// URL"),
        (["--advertise-ingest", "gw.example:50052"], "--advertise-ingest needs --etcd"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "riskd.cli", "serve", "--data-dir", str(tmp_path), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and why in proc.stderr


def test_an_unreachable_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "serve", "--data-dir", str(tmp_path),
         "--grpc-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
         "--storage", "postgresql://riskd:pw@127.0.0.1:1/riskd"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("riskd:")]
    assert len(lines) == 1 and "127.0.0.1:1" in lines[0] and "pw" not in lines[0]
