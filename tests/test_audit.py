"""``riskd audit`` over a real daemon's data directory."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

from riskd.audit import audit
from riskd.config import load
from riskd.v1 import admin_pb2, admin_pb2_grpc

from .api.conftest import start_daemon
from .api.scenario import crash_scenario
from .api.test_durability import stream_all


def _run(tmp_path: Path) -> str:
    d = start_daemon(tmp_path)
    try:
        asyncio.run(stream_all(d, crash_scenario(), "gw-audit"))
        stub = admin_pb2_grpc.AdminServiceStub(d.channel())
        return stub.CheckState(admin_pb2.CheckStateRequest()).digest
    finally:
        assert d.stop() == 0


def test_audit_explains_every_unit_and_matches_the_daemon(tmp_path: Path) -> None:
    served = _run(tmp_path)
    ok, lines = audit(load(), tmp_path / "data")
    assert ok, "\n".join(lines)
    cli = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "audit", "--data", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0 and cli.stdout.splitlines() == lines
    assert any("hash chain intact" in x for x in lines)
    # The clean stop's snapshot sits at the journal's last record, with its hash.
    assert any(x.startswith("ok   snapshot snapshot-") for x in lines), lines
    assert any(x.startswith("ok   fund USDT") for x in lines)
    assert lines[-1].split()[-1] == served  # offline replay == the daemon's state


def test_changing_any_byte_of_history_fails_the_audit(tmp_path: Path) -> None:
    _run(tmp_path)
    db = sqlite3.connect(tmp_path / "data" / "journal.sqlite3")
    rows = db.execute("SELECT n, record FROM journal ORDER BY n").fetchall()
    assert len(rows) > 3
    for n, record in (rows[0], rows[len(rows) // 2], rows[-1]):
        changed = record.replace("5000000", "5000010", 1) if "5000000" in record else record + " "
        db.execute("UPDATE journal SET record = ? WHERE n = ?", (changed, n))
        db.commit()
        ok, lines = audit(load(), tmp_path / "data")
        assert not ok and f"broken at record {n}" in lines[-1], lines
        db.execute("UPDATE journal SET record = ? WHERE n = ?", (record, n))
        db.commit()
    db.close()
    assert audit(load(), tmp_path / "data")[0]


def test_the_published_ledger_verifies_from_the_api_alone(tmp_path: Path) -> None:
    import hashlib

    from riskd.v1 import query_pb2, query_pb2_grpc

    d = start_daemon(tmp_path)
    try:
        asyncio.run(stream_all(d, crash_scenario(), "gw-ledger"))
        q = query_pb2_grpc.QueryServiceStub(d.channel())
        page = q.ListFundLedger(query_pb2.ListFundLedgerRequest(asset="USDT", page_size=1000))
    finally:
        assert d.stop() == 0
    prev = "0" * 64
    assert page.entries
    for e in page.entries:
        text = (
            f"{e.prev_hash}|{e.sequence}|{e.timestamp_ms}|{e.kind}|{e.market}|{e.cause}|"
            f"{e.amount}|{e.balance_after}"
        )
        assert e.prev_hash == prev and e.hash == hashlib.sha256(text.encode()).hexdigest()
        prev = e.hash


def test_an_edited_admin_audit_log_fails_the_audit(tmp_path: Path) -> None:
    _run(tmp_path)  # its CheckState call is an admin call: two audit lines
    path = tmp_path / "data" / "admin-audit.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) >= 2
    ok, report = audit(load(), tmp_path / "data")
    assert ok and any(x.startswith("ok   admin audit log") for x in report), report
    path.write_text("\n".join([lines[0].replace("CheckState", "InjectFund"), *lines[1:]]) + "\n")
    ok, report = audit(load(), tmp_path / "data")
    assert not ok and any(x.startswith("FAIL admin audit log") for x in report), report
