"""Gateway sessions that cannot silently drop updates; the age of unstamped marks.

A stream without an epoch gets a fresh one, journaled before it is handed out
(a restart never hands it out twice); a stream naming an epoch resumes it;
every ack counts the duplicates.  The README's gateway snippet, run twice as a
script, applies twice.  An unstamped mark ages from when riskd applied it (or
is refused under ``require_mark_timestamps``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from riskd.config import ConfigError, default_toml, parse
from riskd.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from riskd_client.gateway import Gateway, SessionMismatch

from .conftest import Daemon, start_daemon
from .test_daemon_e2e import metric, scrape
from .test_idempotency import wallet

README = Path(__file__).resolve().parents[2] / "README.md"
USDT = 10**6
MARK_TS = "riskd_mark_price_timestamp_seconds"


class Stream:
    """A raw Ingest stream: one batch in flight at a time, so one ack per batch."""

    def __init__(self, d: Daemon, gateway: str, epoch: str | None = None) -> None:
        self.channel = d.channel()
        self.q: queue.Queue[ingest_pb2.IngestRequest | None] = queue.Queue()
        metadata = [("x-riskd-gateway", gateway)]
        if epoch is not None:
            metadata.append(("x-riskd-epoch", epoch))
        stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self.call = stub.Ingest(iter(self.q.get, None), metadata=metadata, timeout=30)
        self.first: ingest_pb2.IngestResponse = next(self.call)

    def send(self, *sequences: int) -> ingest_pb2.IngestResponse:
        """Deposits of 1 USDT to account 5 under these sequence numbers; their ack."""
        self.q.put(ingest_pb2.IngestRequest(updates=[deposit(s) for s in sequences]))
        return next(self.call)

    def close(self) -> None:
        self.q.put(None)
        for _ in self.call:  # the server ends the stream with OK
            pass
        self.channel.close()


def deposit(sequence: int, account: int = 5) -> ingest_pb2.Update:
    return ingest_pb2.Update(
        sequence=sequence, deposit=ingest_pb2.Deposit(account=account, asset="USDT", amount=USDT)
    )


def audit(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "riskd.cli", "audit", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fresh_epochs_are_journaled_and_never_handed_out_twice(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    try:
        s = Stream(d, "gw-s")  # no x-riskd-epoch: a new session
        assert (s.first.epoch, s.first.acked_sequence, s.first.rejections_from) == (1, 0, 0)
        ack = s.send(1, 2)
        assert (ack.acked_sequence, ack.duplicates) == (2, 0)
        s.close()
        t = Stream(d, "gw-s", "0")  # 0 asks for a fresh epoch too
        assert (t.first.epoch, t.first.acked_sequence) == (2, 0)
        t.close()  # handed out, nothing sent in it: only the journal knows it
        d.process.send_signal(signal.SIGKILL)
        d.process.wait(10)
    finally:
        if d.process.poll() is None:
            d.stop()

    again = start_daemon(tmp_path)  # journal replay
    try:
        u = Stream(again, "gw-s")
        assert (u.first.epoch, u.first.acked_sequence) == (3, 0)
        assert u.send(1).acked_sequence == 1  # sequence 1 again: a new update, applied
        u.close()
        # A gateway naming its epoch resumes it (as before fresh epochs): riskd
        # says where it stands and counts the resent sequence as a duplicate.
        v = Stream(again, "gw-s", "3")
        assert (v.first.epoch, v.first.acked_sequence) == (3, 1)
        ack = v.send(1, 2)
        assert (ack.acked_sequence, ack.duplicates) == (2, 1)
        v.close()
        # An older epoch is fenced off.
        old = Stream(again, "gw-s", "1")
        assert (old.first.epoch, old.first.acked_sequence) == (1, 0)
        with pytest.raises(grpc.RpcError) as info:
            old.send(3)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "epoch 1 is older than the current epoch 3" in str(info.value.details())
        old.channel.close()
        assert wallet(again, 5) == 4 * USDT  # 2 in epoch 1, 2 in epoch 3; none dropped
    finally:
        assert again.stop() == 0  # a clean stop: the next start loads the snapshot

    last = start_daemon(tmp_path)
    try:
        w = Stream(last, "gw-s")
        assert (w.first.epoch, w.first.acked_sequence) == (4, 0)
        w.close()
        assert Stream(last, "gw-other").first.epoch == 1  # epochs are per gateway
    finally:
        assert last.stop() == 0
    report = audit(tmp_path / "data")  # the epoch records are part of the journal
    assert report.returncode == 0, report.stdout + report.stderr


def test_acks_sum_duplicates_when_folded(daemon: Daemon) -> None:
    s = Stream(daemon, "gw-dup", "7")
    assert (s.first.epoch, s.first.acked_sequence) == (7, 0)
    assert s.send(1, 2, 3).duplicates == 0
    s.close()
    # Two resends in flight at once: whether or not riskd folds their acks into
    # one response, the duplicates add up to the resent updates.
    again = Stream(daemon, "gw-dup", "7")
    assert again.first.acked_sequence == 3
    again.q.put(ingest_pb2.IngestRequest(updates=[deposit(1), deposit(2)]))
    again.q.put(ingest_pb2.IngestRequest(updates=[deposit(3), deposit(4)]))
    acks = [next(again.call)]
    while acks[-1].acked_sequence < 4:
        acks.append(next(again.call))
    assert sum(a.duplicates for a in acks) == 3
    again.close()
    assert wallet(daemon, 5) == 4 * USDT


def _snippet() -> str:
    text = README.read_text()
    found = re.search(
        r"<!-- snippet: gateway-helper.*?-->\n```python\n(.*?)```\n"
        r"<!-- end snippet: gateway-helper -->",
        text,
        re.S,
    )
    assert found, "README.md lost its marked gateway-helper snippet"
    return found.group(1)


def test_readme_gateway_snippet_runs_as_a_script_and_twice_applies_twice(
    daemon: Daemon, tmp_path: Path
) -> None:
    code = _snippet()
    assert "127.0.0.1:50051" in code
    script = tmp_path / "snippet.py"
    script.write_text(code.replace("127.0.0.1:50051", daemon.target))
    query = query_pb2_grpc.QueryServiceStub(daemon.channel())
    epochs = []
    for run in (1, 2):
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        epoch = re.fullmatch(r"epoch (\d+), acked 3", lines[0])
        assert epoch, done.stdout
        epochs.append(int(epoch.group(1)))
        assert lines[1] == "[]", done.stdout  # nothing refused
        account = query.GetAccount(query_pb2.GetAccountRequest(account=7, asset="USDT"))
        # 1,000 USDT in, 100 of it moved into BTC-USDT margin: per run.
        assert account.wallet_balance == run * 900 * USDT
        (pos,) = [p for p in account.positions if p.market == "BTC-USDT"]
        assert pos.isolated_margin == run * 100 * USDT
    assert epochs[1] > epochs[0]


def ours(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "riskd_client.gateway"]


def test_helper_sessions_fresh_by_default_and_loud_when_resuming(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    async def session(updates: int, **kw: int) -> Gateway:
        async with Gateway(daemon.target, "gw-helper", **kw) as gw:
            if "epoch" in kw:
                await gw.wait_connected()  # so riskd's view is known before numbering
            for _ in range(updates):
                gw.deposit(9, "USDT", USDT)
        return gw

    with caplog.at_level(logging.WARNING, logger="riskd_client.gateway"):
        a = asyncio.run(session(3))
        b = asyncio.run(session(3))
        assert (a.epoch, b.epoch) == (1, 2)
        assert (a.duplicates, b.duplicates, a.unsent_acked, b.unsent_acked) == (0, 0, 0, 0)
        assert ours(caplog) == []
        assert wallet(daemon, 9) == 6 * USDT

        # Resuming epoch 2, where riskd holds 1..3, with nothing numbered yet.
        c = asyncio.run(session(4, epoch=2))
    assert c.epoch == 2 and c.unsent_acked == 3 and c.duplicates == 3
    warnings = ours(caplog)
    assert len(warnings) == 2, warnings
    assert "resumes epoch 2: riskd already acknowledged sequences up to 3" in warnings[0]
    assert "riskd already had 3 of the updates acknowledged up to 4" in warnings[1]
    assert wallet(daemon, 9) == 7 * USDT  # the fourth applied, the three resends not


def test_a_fresh_session_resumes_its_own_epoch_when_its_stream_is_cut(tmp_path: Path) -> None:
    """riskd ends the stream over the rate limit; the helper reconnects with the
    epoch it was assigned (not a new one) and its updates apply exactly once."""
    text = default_toml()
    for key, value in (("gateway_updates_per_second", 1000), ("gateway_burst", 10)):
        text = re.sub(rf"^{key} = 0\b", f"{key} = {value}", text, count=1, flags=re.M)
    assert parse(text).server.gateway_burst == 10
    config = tmp_path / "riskd.toml"
    config.write_text(text)
    d = start_daemon(tmp_path, "--config", str(config))
    try:

        async def go() -> Gateway:
            async with Gateway(d.target, "gw-cut", batch_size=2_000) as gw:
                for _ in range(2_010):  # 2,000 into debt, then 10 that must wait ~2 s
                    gw.deposit(6, "USDT", 1)
                await gw.flush(timeout=60)
            return gw

        gw = asyncio.run(go())
        assert gw.throttled >= 1 and gw.epoch == 1
        assert gw.duplicates == 0 and gw.rejections == []
        assert wallet(d, 6) == 2_010
    finally:
        assert d.stop() == 0
    opened = [line for line in d.log.read_text().splitlines() if "ingest_stream_opened" in line]
    assert len(opened) >= 2 and sum('"fresh_epoch": true' in line for line in opened) == 1, opened


def test_helper_refuses_a_first_response_that_contradicts_a_fresh_session() -> None:
    def check(epoch: int, acked: int) -> SessionMismatch | None:
        gw = Gateway("127.0.0.1:1", "gw-x")
        return gw._session(ingest_pb2.IngestResponse(epoch=epoch, acked_sequence=acked))

    old = check(0, 0)  # a riskd from before fresh epochs would resume epoch 0
    assert old is not None and "assigned no epoch" in str(old)
    held = check(5, 2)
    assert held is not None and (held.epoch, held.acked) == (5, 2)
    assert check(5, 0) is None


async def _marks(d: Daemon, updates: list[tuple[str, int, int]]) -> Gateway:
    async with Gateway(d.target, "gw-marks") as gw:
        for market, price, ts in updates:
            gw.mark_price(market, price, ts=ts)
    return gw


def _stamp() -> int:
    """An hour ago on a whole second: inside riskd's default clock window."""
    return (time.time_ns() // 1_000_000 - 3_600_000) // 1_000 * 1_000


def test_unstamped_marks_age_from_when_riskd_applied_them(tmp_path: Path) -> None:
    stamp = _stamp()
    d = start_daemon(tmp_path)
    try:
        before = time.time()
        gw = asyncio.run(_marks(d, [("BTC-USDT", 5_000_000, 0), ("ETH-USDT", 300_000, stamp)]))
        after = time.time()
        assert gw.rejections == []
        text = scrape(d)
        # Not 0 (a Grafana "age" of 56 years, an alert firing forever): riskd's clock.
        assert before <= metric(text, MARK_TS, market="BTC-USDT") <= after
        assert metric(text, MARK_TS, market="ETH-USDT") == stamp / 1000  # the gateway's
        d.process.send_signal(signal.SIGKILL)
        d.process.wait(10)
    finally:
        if d.process.poll() is None:
            d.stop()
    again = start_daemon(tmp_path)
    try:
        text = scrape(again)
        # Replay cannot know when the unstamped mark came: no age until a live mark.
        with pytest.raises(KeyError):
            metric(text, MARK_TS, market="BTC-USDT")
        assert metric(text, MARK_TS, market="ETH-USDT") == stamp / 1000
    finally:
        assert again.stop() == 0


def test_require_mark_timestamps_refuses_unstamped_marks(tmp_path: Path) -> None:
    text = default_toml().replace("[server]\n", "[server]\nrequire_mark_timestamps = true\n", 1)
    assert parse(text).server.require_mark_timestamps
    with pytest.raises(ConfigError, match=r"server\.require_mark_timestamps: must be true"):
        parse(text.replace("require_mark_timestamps = true", "require_mark_timestamps = 1"))
    config = tmp_path / "riskd.toml"
    config.write_text(text)
    stamp = _stamp()
    d = start_daemon(tmp_path, "--config", str(config))
    try:

        async def go() -> Gateway:
            async with Gateway(d.target, "gw-strict") as gw:
                gw.mark_price("BTC-USDT", 5_000_000)  # unstamped: refused
                gw.mark_price("BTC-USDT", 5_000_100, ts=stamp)
                gw.deposit(3, "USDT", USDT)  # only marks must be stamped
            return gw

        gw = asyncio.run(go())
        assert [(r.sequence, r.code, r.field) for r in gw.rejections] == [
            (1, ingest_pb2.REJECTION_CODE_INVALID_ARGUMENT, "updates[0].timestamp_ms")
        ]
        assert "require_mark_timestamps" in gw.rejections[0].message
        assert metric(scrape(d), MARK_TS, market="BTC-USDT") == stamp / 1000
        assert wallet(d, 3) == USDT
    finally:
        assert d.stop() == 0
