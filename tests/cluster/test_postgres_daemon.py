"""riskd serve --storage postgresql://...: acknowledged means durable in PostgreSQL,
and another node (another data directory) rebuilds the same state from it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from riskd.storage.postgres import PostgresJournal
from riskd_client.gateway import Gateway

from ..api.conftest import Daemon, start_daemon
from ..api.scenario import crash_scenario, send
from ..api.test_durability import _recovered, pure_digest, state, stream_all
from .services import Postgres


def _node(tmp: Path, name: str, pg: Postgres, shard: str) -> Daemon:
    return start_daemon(tmp, "--data-dir", str(tmp / name), "--storage", pg.dsn, "--shard", shard)


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
    # A clean stop stored its final snapshot in the database too.  A third node
    # fetches it, but its own fund ledger file is empty, so it replays the
    # journal from the start instead (docs/cluster.md): slower, the same state.
    c = _node(tmp_path, "node-c", pg, shard)
    try:
        assert list((tmp_path / "node-c").glob("snapshot-*.bin"))
        assert _recovered(c)["replayed"] == len(_records(pg, shard))
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
