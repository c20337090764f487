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
from riskd.core.events import Deposit, Fill, MarginTransfer, MarkPrice
from riskd.core.invariants import digest
from riskd.storage import codec
from riskd.storage.records import IngestBatch
from riskd.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2, query_pb2, query_pb2_grpc
from riskd_client.gateway import Gateway

from .conftest import Daemon, start_daemon
from .scenario import USDT, crash_scenario, run_engine, send

PRECONDITION = ingest_pb2.REJECTION_CODE_FAILED_PRECONDITION


def state(d: Daemon) -> admin_pb2.CheckStateResponse:
    return admin_pb2_grpc.AdminServiceStub(d.channel()).CheckState(admin_pb2.CheckStateRequest())


def pure_digest(inputs: list) -> str:
    cfg = config_mod.load()
    return digest(run_engine(inputs, Engine(cfg.markets, cfg.funds)))


async def stream_all(d: Daemon, inputs: list, gateway: str, batch: int = 3) -> Gateway:
    # One epoch: a gateway resending its whole history has it applied once.
    async with Gateway(d.target, gateway, epoch=1, batch_size=batch) as gw:
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
    # Snapshots every 20 ms: kills also land while a forked child writes one,
    # and restarts alternate between snapshot + tail and journal only.
    config = tmp_path / "riskd.toml"
    toml = config_mod.default_toml()
    config.write_text(toml.replace("snapshot_seconds = 300", "snapshot_seconds = 0.02"))
    for k in range(cycles):
        d = start_daemon(tmp_path, "--config", str(config))
        prefix = inputs[: len(inputs) * (k + 1) // (cycles + 1)]

        async def until_killed(d: Daemon = d, prefix: list = prefix) -> int:
            gw = Gateway(d.target, "gw-crash", epoch=1, batch_size=2, window=8)
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
            async with Gateway(d.target, "gw-crash", epoch=1) as gw:
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


# --- remembered trade and deposit ids ---------------------------------------------------


def _ids_inputs(first_trade: int, first_deposit: int) -> list:
    """Fund accounts 31/32 (deposits with ids) and trade once between them (with an id)."""
    m = "BTC-USDT"
    return [
        Deposit(31, "USDT", 10_000 * USDT, deposit_id=first_deposit),
        Deposit(32, "USDT", 10_000 * USDT, deposit_id=first_deposit + 1),
        MarginTransfer(31, m, 1_000 * USDT),
        MarginTransfer(32, m, 1_000 * USDT),
        MarkPrice(m, 5_000_000),
        Fill(m, first_trade, 31, 32, 5_000_000, 10),
    ]


async def _stream_ids(d: Daemon, inputs: list, gateway: str) -> Gateway:
    """Like :func:`stream_all`, deposit ids included."""
    async with Gateway(d.target, gateway) as gw:
        for x in inputs:
            if isinstance(x, Deposit):
                gw.deposit(x.account, x.asset, x.amount, deposit_id=x.deposit_id, ts=x.ts)
            else:
                send(gw, x)
        await gw.flush()
    return gw


def _refused_fields(gw: Gateway) -> list[tuple[int, str]]:
    return [(r.sequence, r.field.split(".", 1)[1]) for r in gw.rejections]


def test_remembered_ids_survive_clean_and_sigkill_restarts(tmp_path: Path) -> None:
    """A trade or deposit id used before a restart is still refused after it."""
    m = "BTC-USDT"
    first = _ids_inputs(first_trade=7001, first_deposit=501)
    resent = [
        Fill(m, 7001, 32, 31, 5_000_000, 10),  # the same id, the other way round
        Deposit(31, "USDT", 10_000 * USDT, deposit_id=501),  # the same deposit again
    ]
    second = [Deposit(31, "USDT", USDT, deposit_id=503), Fill(m, 7002, 31, 32, 5_000_000, 5)]
    d = start_daemon(tmp_path)
    try:
        gw = asyncio.run(_stream_ids(d, first, "gw-ids-1"))
        assert gw.rejections == []
        before = state(d)
        assert before.digest == pure_digest(first)  # the daemon remembers what the core does
    finally:
        assert d.stop() == 0  # a clean stop: the restart loads the snapshot

    again = start_daemon(tmp_path)
    try:
        assert state(again).digest == before.digest
        gw = asyncio.run(_stream_ids(again, [*resent, *second], "gw-ids-2"))
        refused = [(1, "fill.trade_id"), (2, "deposit.deposit_id")]
        assert _refused_fields(gw) == refused, gw.rejections
        assert all(r.code == PRECONDITION for r in gw.rejections)
        after_second = state(again).digest
        assert after_second == pure_digest([*first, *resent, *second])
        again.process.send_signal(signal.SIGKILL)  # acknowledged: in the journal, no snapshot
        again.process.wait(10)
    finally:
        if again.process.poll() is None:
            again.stop()

    last = start_daemon(tmp_path)
    try:
        assert _recovered(last)["replayed"] > 0  # the ids came back from the journal
        assert state(last).digest == after_second
        gw = asyncio.run(_stream_ids(last, [*second, *resent], "gw-ids-3"))
        assert _refused_fields(gw) == [
            (1, "deposit.deposit_id"),
            (2, "fill.trade_id"),
            (3, "fill.trade_id"),
            (4, "deposit.deposit_id"),
        ], gw.rejections
        assert state(last).digest == after_second
    finally:
        assert last.stop() == 0


def test_journal_records_carry_deposit_ids_and_old_ones_still_decode() -> None:
    d = Deposit(7, "USDT", 5, 1_700_000_000_000, deposit_id=2**64 - 1)
    f = Fill("BTC-USDT", 2**64 - 1, 1, 2, 5_000_000, 3, 4, 5, 6)
    batch = IngestBatch("gw", 1, ((1, d), (2, f)))
    assert codec.decode(codec.encode(batch)) == batch
    # A record written before deposits had an id: five fields, id 0 ("not given").
    old = codec.decode(
        '{"k":"ingest","g":"gw","e":1,"u":[[1,["Deposit",7,"USDT",5,1700000000000]]]}'
    )
    assert old == IngestBatch("gw", 1, ((1, Deposit(7, "USDT", 5, 1_700_000_000_000)),))


def test_reused_ids_in_one_batch_are_refused_in_the_daemon_like_the_core(tmp_path: Path) -> None:
    """Duplicates inside one batch, the same order through the pure engine: same state."""
    m = "BTC-USDT"
    inputs = [
        *_ids_inputs(first_trade=9001, first_deposit=601),
        Fill(m, 9001, 31, 32, 5_000_000, 10),  # the same trade again
        Fill(m, 0, 31, 32, 5_000_000, 1),  # no id: never checked
        Fill(m, 0, 31, 32, 5_000_000, 1),
        Deposit(32, "USDT", 1, deposit_id=601),  # another deposit under 601
        Deposit(32, "USDT", 1, deposit_id=0),
        Deposit(32, "USDT", 1, deposit_id=0),
    ]
    d = start_daemon(tmp_path)
    try:
        gw = asyncio.run(_stream_ids(d, inputs, "gw-ids-batch"))
        assert _refused_fields(gw) == [(7, "fill.trade_id"), (10, "deposit.deposit_id")]
        s = state(d)
        assert s.violations == [] and s.digest == pure_digest(inputs)
    finally:
        assert d.stop() == 0
