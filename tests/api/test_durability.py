"""Acknowledged means durable: restarts, clean or SIGKILL, rebuild the same state."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from riskd import config as config_mod
from riskd.cli import EXIT_CORRUPT
from riskd.core import Engine
from riskd.core.events import Deposit
from riskd.core.invariants import digest
from riskd.v1 import admin_pb2, admin_pb2_grpc, query_pb2, query_pb2_grpc
from riskd_client.gateway import Gateway

from .conftest import Daemon, start_daemon
from .scenario import crash_scenario, run_engine, send


def state(d: Daemon) -> admin_pb2.CheckStateResponse:
    return admin_pb2_grpc.AdminServiceStub(d.channel()).CheckState(admin_pb2.CheckStateRequest())


def pure_digest(inputs: list) -> str:
    cfg = config_mod.load()
    return digest(run_engine(inputs, Engine(cfg.markets, cfg.funds)))


async def stream_all(d: Daemon, inputs: list, gateway: str, batch: int = 3) -> Gateway:
    async with Gateway(d.target, gateway, batch_size=batch) as gw:
        for x in inputs:
            send(gw, x)
        await gw.flush()
    return gw


def test_clean_restart_rebuilds_the_same_state(tmp_path: Path) -> None:
    inputs = crash_scenario()
    d = start_daemon(tmp_path)
    try:
        asyncio.run(stream_all(d, inputs, "gw-restart"))
        before = state(d)
        w = query_pb2_grpc.QueryServiceStub(d.channel())
        fund = w.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT")).fund
    finally:
        assert d.stop() == 0
    assert before.violations == [] and before.digest == pure_digest(inputs)

    again = start_daemon(tmp_path)
    try:
        after = state(again)
        assert after.digest == before.digest
        q = query_pb2_grpc.QueryServiceStub(again.channel())
        assert q.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT")).fund == fund
        # The gateway is told everything was applied; resending changes nothing.
        gw = asyncio.run(stream_all(again, inputs, "gw-restart"))
        assert gw.acked_sequence == len(inputs)
        assert state(again).digest == before.digest
    finally:
        assert again.stop() == 0


def test_sigkill_at_random_instants_loses_nothing_acked(tmp_path: Path) -> None:
    """Kill -9 while a gateway streams; restart; the helper resumes; compare digests."""
    base = crash_scenario()
    t = base[-1].ts
    # Many small state changes between the scenario's steps, so kills land mid-work.
    inputs = [
        *base[:12],
        *(Deposit(5 + i % 3, "USDT", 1_000 + i, t) for i in range(150)),
        *base[12:],
    ]
    cycles = int(os.environ.get("RISKD_CRASH_CYCLES", "25"))
    rnd = random.Random(7)
    acked_before_kill = 0
    for k in range(cycles):
        d = start_daemon(tmp_path)
        prefix = inputs[: len(inputs) * (k + 1) // (cycles + 1)]

        async def until_killed(d: Daemon = d, prefix: list = prefix) -> int:
            gw = Gateway(d.target, "gw-crash", batch_size=2, window=8)
            await gw.start()
            await gw.wait_connected()
            for x in prefix:
                send(gw, x)
            gw._seal()
            await asyncio.sleep(rnd.uniform(0.0, 0.05))
            d.process.send_signal(signal.SIGKILL)
            acked = gw.acked_sequence
            await gw.close()
            return acked

        acked = asyncio.run(until_killed())
        acked_before_kill = max(acked_before_kill, acked)
        d.process.wait(10)
    d = start_daemon(tmp_path)
    try:

        async def resumed() -> int:
            async with Gateway(d.target, "gw-crash") as gw:
                return await gw.wait_connected()

        # What was acknowledged before a kill survived every restart.
        assert asyncio.run(resumed()) >= acked_before_kill > 0
        gw = asyncio.run(stream_all(d, inputs, "gw-crash", batch=2))
        assert gw.acked_sequence == len(inputs) and gw.rejections == []
        final = state(d)
        assert final.violations == []
        assert final.digest == pure_digest(inputs)  # nothing lost, nothing applied twice
    finally:
        assert d.stop() == 0


def test_unreadable_journal_refuses_to_start_with_its_own_exit_code(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    asyncio.run(stream_all(d, crash_scenario(), "gw-corrupt"))
    assert d.stop() == 0
    journal = tmp_path / "data" / "journal.sqlite3"
    data = bytearray(journal.read_bytes())
    data[:100] = b"\xff" * 100  # the SQLite header: nothing after it can be trusted
    journal.write_bytes(bytes(data))
    proc = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "serve", "--grpc-listen", "127.0.0.1:0",
         "--metrics-listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == EXIT_CORRUPT, proc.stderr
    assert "journal is unreadable" in proc.stderr


def _recovered(d: Daemon) -> dict[str, int]:
    import json

    for line in d.log.read_text().splitlines():
        if '"riskd_recovered"' in line:
            rec = json.loads(line)
            return {"snapshot": rec["snapshot_records"], "replayed": rec["replayed"]}
    raise AssertionError("no riskd_recovered line")


def test_restart_is_snapshot_plus_journal_tail(tmp_path: Path) -> None:
    from riskd.config import default_toml

    config = tmp_path / "riskd.toml"
    config.write_text(default_toml().replace("snapshot_seconds = 300", "snapshot_seconds = 0.3"))
    inputs = crash_scenario()
    first, rest = inputs[:9], inputs[9:]
    d = start_daemon(tmp_path, "--config", str(config))
    asyncio.run(stream_all(d, first, "gw-snap"))
    deadline = time.monotonic() + 10
    while not list((tmp_path / "data").glob("snapshot-*.bin")) and time.monotonic() < deadline:
        time.sleep(0.05)
    asyncio.run(stream_all(d, inputs, "gw-snap"))
    d.process.send_signal(signal.SIGKILL)
    d.process.wait(10)
    again = start_daemon(tmp_path, "--config", str(config))
    try:
        rec = _recovered(again)
        assert rec["snapshot"] > 0
        assert state(again).digest == pure_digest(inputs)
        assert state(again).violations == []
    finally:
        assert again.stop() == 0
    # After a clean stop the final snapshot covers everything: nothing to replay.
    last = start_daemon(tmp_path, "--config", str(config))
    try:
        assert _recovered(last)["replayed"] == 0
        assert state(last).digest == pure_digest(inputs)
    finally:
        assert last.stop() == 0
    assert rest  # the scenario's crash came after the first snapshot
