"""Upgrades: every golden data directory an earlier riskd wrote reads to the same state.

``golden/vN/`` is a real ``riskd serve`` run (``golden/make_golden.py``) by the
release that wrote journal format N: a snapshot, a journal tail after it, the
admin audit log, and the digest ``CheckState`` reported.  This version must
read every one of them (the journal through the codec, the snapshot or, if it
cannot read an older snapshot, the journal alone) to that digest, with
``riskd audit`` and ``riskd serve`` alike; and refuse, with exit 3 naming the
version, a record of a format newer than it knows.

The expected digest pins the engine's arithmetic too: a deliberate change of
it (a rounding rule) updates ``expected.json``, saying why in the commit;
the records themselves must decode unchanged.

Also here: market settings survive restarts as they were journaled, whatever
the config file says now.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from riskd import config as config_mod
from riskd.audit import audit
from riskd.cli import EXIT_CORRUPT, EXIT_STARTUP
from riskd.core import Engine
from riskd.core.invariants import digest
from riskd.storage import codec, records
from riskd.storage.journal import SqliteJournal
from riskd.storage.records import EngineTarget, MarketSettings, MarketUpdated
from riskd.v1 import admin_pb2, admin_pb2_grpc, query_pb2, query_pb2_grpc, types_pb2
from riskd_client.gateway import Gateway

from ..api.conftest import Daemon, start_daemon

GOLDEN = Path(__file__).parent / "golden"
CONFIG = GOLDEN / "riskd.toml"
VERSIONS = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir() and p.name.startswith("v"))
M = "BTC-USDT"
USDT = 1_000_000


def test_every_format_up_to_this_one_has_a_golden_directory() -> None:
    # vN, or vN-what when a snapshot format changed under journal format N.
    formats = {int(v[1:].split("-")[0]) for v in VERSIONS}
    assert formats == set(range(codec.OLDEST, codec.FORMAT + 1))


def test_the_golden_directories_of_this_format_hold_every_record_kind() -> None:
    """A new record kind needs a golden directory that has one (make_golden.py)."""
    kinds = {
        type(codec.decode(t)).__name__
        for v in VERSIONS
        if int(v[1:].split("-")[0]) == codec.FORMAT
        for t in _texts(GOLDEN / v / "data")
    }
    assert kinds == {t.__name__ for t in typing.get_args(records.Record)}


def _copy(version: str, tmp: Path) -> Path:
    shutil.copytree(GOLDEN / version / "data", tmp / "data")
    return tmp / "data"


def _expected(version: str) -> str:
    return str(json.loads((GOLDEN / version / "expected.json").read_text())["digest"])


def _texts(data: Path) -> list[str]:
    db = sqlite3.connect(f"file:{data / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        return [r for (r,) in db.execute("SELECT record FROM journal ORDER BY n")]
    finally:
        db.close()


def _state(d: Daemon) -> admin_pb2.CheckStateResponse:
    return admin_pb2_grpc.AdminServiceStub(d.channel()).CheckState(admin_pb2.CheckStateRequest())


def _recovered(d: Daemon) -> dict[str, int]:
    for line in d.log.read_text().splitlines():
        if '"riskd_recovered"' in line:
            rec: dict[str, int] = json.loads(line)
            return rec
    raise AssertionError("no riskd_recovered line")


def _serve_refused(config: str | Path, data: Path) -> subprocess.CompletedProcess[str]:
    """``riskd serve`` on ``data``, expected to refuse the start (it is not stopped)."""
    return subprocess.run(
        [sys.executable, "-m", "riskd.cli", "serve", "--config", str(config),
         "--grpc-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
         "--data-dir", str(data)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
def test_the_pure_engine_replays_a_golden_journal_to_its_digest(version: str) -> None:
    cfg = config_mod.load(str(CONFIG))
    engine = Engine(cfg.markets, cfg.funds)
    target = EngineTarget(engine)
    for text in _texts(GOLDEN / version / "data"):
        records.apply(codec.decode(text), target)
    assert digest(engine) == _expected(version)


@pytest.mark.parametrize("version", VERSIONS)
def test_riskd_audit_reads_a_golden_directory_to_its_digest(version: str, tmp_path: Path) -> None:
    data = _copy(version, tmp_path)
    ok, lines = audit(config_mod.load(str(CONFIG)), data)
    assert ok, "\n".join(lines)
    assert lines[-1].split()[-1] == _expected(version)
    assert any(x.startswith("ok   snapshot snapshot-") for x in lines), lines


@pytest.mark.parametrize("version", VERSIONS)
def test_riskd_serve_restarts_from_a_golden_directory_to_its_digest(
    version: str, tmp_path: Path
) -> None:
    data = _copy(version, tmp_path)
    covered = int(next(data.glob("snapshot-*.bin")).stem.split("-")[1])
    held = len(_texts(data))
    d = start_daemon(tmp_path, "--config", str(CONFIG))
    try:
        assert _state(d).digest == _expected(version)
        # The snapshot was read, or (one of a snapshot format this riskd no
        # longer reads) skipped for the whole journal: the same state either way.
        recovered = _recovered(d)
        assert recovered["snapshot_records"] in (0, covered)
        if version == "v1":
            # Format 1 never journaled settings: the live ones (an UpdateMarket of
            # the golden run) are kept, and the start says where the file differs.
            [warned] = [x for x in d.log.read_text().splitlines() if "market_settings_differ" in x]
            assert json.loads(warned)["keys"] == ["markets.BTC-USDT.fund_fee_share_ppm"]
    finally:
        assert d.stop() == 0
    texts = _texts(data)
    # From here on the directory is this version's: its settings are journaled
    # (format 1 never recorded them), and audit and a second restart agree.
    assert any(isinstance(codec.decode(t), MarketSettings) for t in texts)
    # What the start appended (format 1 data: its settings) is in this format.
    assert all(json.loads(t).get("v") == codec.FORMAT for t in texts[held:])
    ok, lines = audit(config_mod.load(str(CONFIG)), data)
    assert ok and lines[-1].split()[-1] == _expected(version), lines
    again = start_daemon(tmp_path, "--config", str(CONFIG))
    try:
        assert _state(again).digest == _expected(version)
    finally:
        assert again.stop() == 0


def _append_future_record(data: Path) -> None:
    journal = SqliteJournal(data / "journal.sqlite3")
    try:  # a valid hash chain: only the format is unknown
        future = {"v": codec.FORMAT + 1, "kind": "ingest", "batch": "whatever v3 holds"}
        journal.append([json.dumps(future)])
    finally:
        journal.close()


def test_a_record_of_a_future_format_is_refused_with_exit_3_naming_the_version(
    tmp_path: Path,
) -> None:
    data = _copy(f"v{codec.FORMAT}", tmp_path)
    _append_future_record(data)
    future = codec.FORMAT + 1
    audited = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "audit", "--data", str(data), "--config", str(CONFIG)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert audited.returncode == EXIT_CORRUPT, audited.stdout + audited.stderr
    assert f"record {len(_texts(data))}: journal format version {future}" in audited.stdout
    before = (data / "journal.sqlite3").read_bytes()
    served = _serve_refused(CONFIG, data)
    assert served.returncode == EXIT_CORRUPT, served.stderr
    [line] = [x for x in served.stderr.splitlines() if x.startswith("riskd:")]
    assert f"journal format version {future}" in line
    assert f"reads versions 1 to {codec.FORMAT}" in line
    assert "riskd_serving" not in served.stdout
    # Refused before anything was applied or written.
    assert SqliteJournal(data / "journal.sqlite3").count() == len(_texts(data))
    assert len(before) == len((data / "journal.sqlite3").read_bytes())


# --- market settings across restarts ---------------------------------------------


def _config(tmp: Path, name: str, edit: tuple[str, str] | None = None) -> str:
    text = config_mod.default_toml()
    if edit is not None:
        old, new = edit
        assert text.count(old) >= 1, old
        text = text.replace(old, new, 1)  # the first occurrence: BTC-USDT's
    path = tmp / name
    path.write_text(text)
    return str(path)


def _markets(d: Daemon) -> dict[str, types_pb2.Market]:
    q = query_pb2_grpc.QueryServiceStub(d.channel())
    return {m.symbol: m for m in q.ListMarkets(query_pb2.ListMarketsRequest()).markets}


def _kinds(data: Path) -> list[str]:
    return [type(codec.decode(t)).__name__ for t in _texts(data)]


async def _fill_off_the_new_tick(d: Daemon) -> None:
    t = (time.time_ns() // 1_000_000 - 3_600_000) // 60_000 * 60_000
    async with Gateway(d.target, "gw-settings", batch_size=8) as gw:
        for a in (1, 2):
            gw.deposit(a, "USDT", 10_000 * USDT, ts=t)
            gw.margin_transfer(a, M, 1_000 * USDT, ts=t)
        gw.mark_price(M, 5_000_000, ts=t)
        # On a tick of 10 (0.10 USDT), not of 20: only the recorded settings take it.
        gw.fill(M, 1, 2, 5_000_010, 1, trade_id=1, ts=t)
        await gw.flush()
    assert gw.rejections == []


def _position(d: Daemon, account: int) -> int:
    q = query_pb2_grpc.QueryServiceStub(d.channel())
    r = q.GetPosition(query_pb2.GetPositionRequest(account=account, market=M))
    return int(r.position.size)


def test_a_new_journal_begins_with_the_market_settings_and_replay_uses_them(
    tmp_path: Path,
) -> None:
    first = _config(tmp_path, "a.toml")
    d = start_daemon(tmp_path, "--config", first)
    try:
        asyncio.run(_fill_off_the_new_tick(d))
        admin = admin_pb2_grpc.AdminServiceStub(d.channel())
        admin.UpdateMarket(
            admin_pb2.UpdateMarketRequest(market=types_pb2.Market(symbol=M, fund_fee_share_ppm=7))
        )
        assert _position(d, 1) == 1
    finally:
        d.process.kill()  # no snapshot: the next start replays the journal alone
        d.process.wait(20)
    data = tmp_path / "data"
    kinds = _kinds(data)
    assert kinds[0] == "MarketSettings" and kinds[-1] == "MarketUpdated", kinds
    recorded = codec.decode(_texts(data)[0])
    assert isinstance(recorded, MarketSettings)
    assert set(recorded.created) == {s.symbol for s in config_mod.load().markets}
    # The file's tick size changes: replay still applies the journal under the
    # recorded one (the fill stays), then the edit applies on top, journaled.
    edited = _config(tmp_path, "b.toml", ("tick_size = 10 ", "tick_size = 20 "))
    again = start_daemon(tmp_path, "--config", edited)
    try:
        assert _recovered(again)["replayed"] == len(kinds)
        assert _position(again, 1) == 1 and _position(again, 2) == -1
        markets = _markets(again)
        assert markets[M].fund_fee_share_ppm == 7  # UpdateMarket's change: the file left it
        assert markets[M].tick_size == 20  # the file's edit
        served = _state(again).digest
    finally:
        assert again.stop() == 0
    assert _kinds(data)[len(kinds) :] == ["MarketUpdated", "MarketSettings"]
    change = codec.decode(_texts(data)[len(kinds)])
    assert isinstance(change, MarketUpdated) and dict(change.changes) == {"tick_size": 20}
    # The audit reads the journal's settings, not the file's: either file, one state.
    for path in (first, edited):
        ok, lines = audit(config_mod.load(path), data)
        assert ok and lines[-1].split()[-1] == served, lines
    # An unchanged file on the next start journals nothing.
    count = len(_texts(data))
    last = start_daemon(tmp_path, "--config", edited)
    try:
        assert _markets(last)[M].tick_size == 20 and _state(last).digest == served
    finally:
        assert last.stop() == 0
    assert len(_texts(data)) == count


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (None, "markets.ETH-USDT: the data directory holds this market"),
        (("decimals = 6", "decimals = 8"), "markets.BTC-USDT.asset: cannot change"),
        (("quantity_decimals = 3", "quantity_decimals = 2"), "markets.BTC-USDT.quantity_decimals"),
    ],
)
def test_a_file_the_data_directory_cannot_follow_is_refused_naming_the_key(
    tmp_path: Path, edit: tuple[str, str] | None, key: str
) -> None:
    d = start_daemon(tmp_path, "--config", _config(tmp_path, "a.toml"))
    assert d.stop() == 0
    data = tmp_path / "data"
    count = len(_texts(data))
    edited = _config(tmp_path, "b.toml", edit)
    if edit is None:  # ETH-USDT dropped: its section, up to the next market's
        text = Path(edited).read_text()
        cut = text[text.index("[markets.ETH-USDT]") : text.index("[markets.BTC-USD]")]
        Path(edited).write_text(text.replace(cut, ""))
    config_mod.load(edited)  # a valid file: only the data directory cannot follow it
    served = _serve_refused(edited, data)
    assert served.returncode == EXIT_STARTUP, served.stderr
    [line] = [x for x in served.stderr.splitlines() if x.startswith("riskd:")]
    assert line.startswith(f"riskd: bad configuration: {key}"), line
    assert len(_texts(data)) == count  # nothing journaled
