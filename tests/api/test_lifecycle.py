"""Market lifecycle and the mark-price guard through a real daemon (issue 16, part B).

A market added at runtime survives a crash (journal replay) and a clean restart
(snapshot); halting refuses fills; settlement closes every position at one
price, pays wallets, leaves the fund alone and delists the market for good.
The mark guard shows in ListMarkets, the metric, the event stream and the
admin audit log.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from riskd import config as config_mod
from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    ingest_pb2,
    query_pb2,
    query_pb2_grpc,
    types_pb2,
)

from .conftest import Daemon, start_daemon
from .test_bad_input import RawStream

U = ingest_pb2.Update
USDT = 10**6
M = "BTC-USDT"
SOL = "SOL-USDT"
PRECONDITION = ingest_pb2.REJECTION_CODE_FAILED_PRECONDITION


def admin(d: Daemon) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(d.channel())


def query(d: Daemon) -> query_pb2_grpc.QueryServiceStub:
    return query_pb2_grpc.QueryServiceStub(d.channel())


def markets(d: Daemon) -> dict[str, types_pb2.Market]:
    listed = query(d).ListMarkets(query_pb2.ListMarketsRequest()).markets
    return {m.symbol: m for m in listed}


def state(d: Daemon) -> admin_pb2.CheckStateResponse:
    return admin(d).CheckState(admin_pb2.CheckStateRequest())


def metric(d: Daemon, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_start}")


def mark(market: str, price: int, index: int = 0) -> ingest_pb2.Update:
    return U(mark_price=ingest_pb2.MarkPrice(market=market, price=price, index_price=index))


def deposit(account: int, amount: int) -> ingest_pb2.Update:
    return U(deposit=ingest_pb2.Deposit(account=account, asset="USDT", amount=amount))


def margin(account: int, market: str, amount: int) -> ingest_pb2.Update:
    return U(
        margin_transfer=ingest_pb2.MarginTransfer(account=account, market=market, amount=amount)
    )


def fill(
    market: str, trade: int, buyer: int, seller: int, price: int, qty: int
) -> ingest_pb2.Update:
    return U(
        fill=ingest_pb2.Fill(
            market=market,
            trade_id=trade,
            buyer_account=buyer,
            seller_account=seller,
            price=price,
            quantity=qty,
        )
    )


def test_a_guarded_mark_liquidates_nobody_until_an_operator_clears_it(daemon: Daemon) -> None:
    admin(daemon).UpdateMarket(
        admin_pb2.UpdateMarketRequest(
            market=types_pb2.Market(
                symbol=M, mark_max_jump_ppm=50_000, mark_max_divergence_ppm=20_000
            )
        )
    )
    s = RawStream(daemon, "gw-guard")
    r = s.send(
        deposit(1, 1_000 * USDT),
        deposit(2, 20_000 * USDT),
        margin(1, M, 1_000 * USDT),
        margin(2, M, 20_000 * USDT),
        mark(M, 5_000_000, 5_000_000),
        fill(M, 1, 1, 2, 5_000_000, 1_000),  # 1 long 1 BTC at 50x
    )
    assert list(r.rejections) == [], r
    # 6 % down in one tick, and 6 % off the index: past 1's liquidation price.
    assert list(s.send(mark(M, 4_700_000, 5_000_000)).rejections) == []
    btc = markets(daemon)[M]
    assert btc.mark_guard == types_pb2.MARK_GUARD_REASON_JUMP
    assert (btc.mark_price, btc.good_mark_price) == (4_700_000, 5_000_000)
    pos = query(daemon).GetPosition(query_pb2.GetPositionRequest(account=1, market=M)).position
    assert pos.size == 1_000 and not pos.in_liquidation and pos.unrealized_pnl == -3_000 * USDT
    assert metric(daemon, 'riskd_mark_guard{market="BTC-USDT",reason="jump"}') == 1.0
    assert state(daemon).violations == []
    # The operator vouches for the mark: the guard clears and 1 is liquidated.
    after = admin(daemon).OverrideMarkGuard(admin_pb2.OverrideMarkGuardRequest(market=M)).market
    assert after.mark_guard == types_pb2.MARK_GUARD_REASON_UNSPECIFIED
    assert after.good_mark_price == 4_700_000
    pos = query(daemon).GetPosition(query_pb2.GetPositionRequest(account=1, market=M)).position
    assert pos.size == 0 or pos.in_liquidation
    assert metric(daemon, 'riskd_mark_guard{market="BTC-USDT",reason="jump"}') == 0.0
    s.close()
    events = events_pb2_grpc.EventServiceStub(daemon.channel()).Subscribe(
        events_pb2.SubscribeRequest(from_sequence=1, markets=[M]), timeout=3
    )
    reasons = []
    with pytest.raises(grpc.RpcError):  # the deadline ends the subscription
        for e in events:
            if e.event.HasField("mark_guard_changed"):
                reasons.append(e.event.mark_guard_changed.reason)
    assert reasons == [
        types_pb2.MARK_GUARD_REASON_JUMP,
        types_pb2.MARK_GUARD_REASON_UNSPECIFIED,
    ]
    audit = (Path(daemon.log).parent / "data" / "admin-audit.jsonl").read_text()
    assert "OverrideMarkGuard" in audit
    assert state(daemon).violations == []


def _new_market() -> types_pb2.Market:
    return types_pb2.Market(
        symbol=SOL,
        contract_type=types_pb2.CONTRACT_TYPE_LINEAR,
        settle_asset="USDT",
        price_decimals=2,
        quantity_decimals=2,
        tiers=[
            types_pb2.RiskTier(
                notional_floor=0, max_leverage=20, maintenance_margin_rate_ppm=25_000
            )
        ],
    )


def test_added_market_survives_restarts_halts_and_settles_for_good(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    added = admin(d).AddMarket(admin_pb2.AddMarketRequest(market=_new_market())).market
    assert (added.symbol, added.status) == (SOL, types_pb2.MARKET_STATUS_OPEN)
    assert added.fill_price_band_ppm == 50_000  # fill sanity on, as for the file's markets
    s = RawStream(d, "gw-sol", epoch=1)
    r = s.send(
        deposit(3, 1_000 * USDT),
        deposit(4, 1_000 * USDT),
        margin(3, SOL, 100 * USDT),
        margin(4, SOL, 100 * USDT),
        mark(SOL, 15_000),
        fill(SOL, 1, 3, 4, 15_000, 500),  # 3 long 5 SOL at 150.00
    )
    assert list(r.rejections) == [], r
    before = state(d).digest
    d.process.send_signal(signal.SIGKILL)  # no snapshot: the journal alone brings it back
    d.process.wait(10)

    d = start_daemon(tmp_path)
    assert SOL in markets(d) and state(d).digest == before
    changed = (
        admin(d)
        .SetMarketStatus(
            admin_pb2.SetMarketStatusRequest(market=SOL, status=types_pb2.MARKET_STATUS_HALTED)
        )
        .market
    )
    assert changed.status == types_pb2.MARKET_STATUS_HALTED
    s = RawStream(d, "gw-sol-halted")
    r = s.send(fill(SOL, 2, 3, 4, 15_000, 100), mark(SOL, 15_100))
    [refused] = r.rejections
    assert (refused.code, refused.field) == (PRECONDITION, "updates[0].fill.market"), r
    admin(d).SetMarketStatus(
        admin_pb2.SetMarketStatusRequest(market=SOL, status=types_pb2.MARKET_STATUS_OPEN)
    )
    s.close()
    before = state(d).digest
    assert d.stop() == 0  # a clean stop: the snapshot holds the added market

    d = start_daemon(tmp_path)
    try:
        assert markets(d)[SOL].mark_price == 15_100 and state(d).digest == before
        settled = admin(d).SettleMarket(admin_pb2.SettleMarketRequest(market=SOL, price=16_000))
        assert settled.positions == 2
        # 5 SOL from 150 to 160: 3 gains 50 USDT, 4 loses them; no fund involved.
        for account, balance in ((3, 1_050 * USDT), (4, 950 * USDT)):
            got = query(d).GetAccount(query_pb2.GetAccountRequest(account=account, asset="USDT"))
            assert (got.wallet_balance, list(got.positions)) == (balance, [])
        assert SOL not in markets(d)
        with pytest.raises(grpc.RpcError) as e:
            query(d).GetPosition(query_pb2.GetPositionRequest(account=3, market=SOL))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        s = RawStream(d, "gw-sol-2")
        [refused] = s.send(mark(SOL, 15_000)).rejections
        assert (refused.code, refused.field) == (PRECONDITION, "updates[0].mark_price.market")
        s.close()
        assert state(d).violations == []
        before = state(d).digest
    finally:
        assert d.stop() == 0, d.log.read_text()

    d = start_daemon(tmp_path)
    try:
        assert SOL not in markets(d) and state(d).digest == before
    finally:
        assert d.stop() == 0, d.log.read_text()


def test_an_added_market_is_in_the_snapshots_the_writer_process_takes(tmp_path: Path) -> None:
    """Periodic snapshots are rebuilt in another process from the journal: the
    added market must be in them, and a start from one (and the tail) runs it."""
    config = tmp_path / "riskd.toml"
    toml = config_mod.default_toml()
    config.write_text(toml.replace("snapshot_seconds = 300", "snapshot_seconds = 0.2"))
    d = start_daemon(tmp_path, "--config", str(config))
    admin(d).AddMarket(admin_pb2.AddMarketRequest(market=_new_market()))
    s = RawStream(d, "gw-sol-snap")
    r = s.send(
        deposit(3, 1_000 * USDT),
        deposit(4, 1_000 * USDT),
        margin(3, SOL, 100 * USDT),
        margin(4, SOL, 100 * USDT),
        mark(SOL, 15_000),
        fill(SOL, 1, 3, 4, 15_000, 500),
    )
    assert list(r.rejections) == [], r
    before = state(d).digest
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # a snapshot taken after the fill
        written = [
            json.loads(x) for x in d.log.read_text().splitlines() if '"snapshot_written"' in x
        ]
        if written and written[-1]["records"] >= 3:  # settings, market_added, the batch
            break
        time.sleep(0.05)
    else:
        raise AssertionError(d.log.read_text())
    d.process.send_signal(signal.SIGKILL)
    d.process.wait(10)
    d = start_daemon(tmp_path, "--config", str(config))
    try:
        recovered = json.loads(
            next(x for x in d.log.read_text().splitlines() if '"riskd_recovered"' in x)
        )
        assert recovered["snapshot_records"] >= 3
        assert SOL in markets(d) and state(d).digest == before
        pos = query(d).GetPosition(query_pb2.GetPositionRequest(account=3, market=SOL)).position
        assert pos.size == 500
    finally:
        assert d.stop() == 0, d.log.read_text()


_OPERATOR_EVENTS = ("market_status_changed", "mark_guard_changed", "market_settled")


def _stamps(d: Daemon) -> list[tuple[str, int]]:
    """Every operator-made event on the stream so far: (kind, timestamp_ms)."""
    events = events_pb2_grpc.EventServiceStub(d.channel()).Subscribe(
        events_pb2.SubscribeRequest(from_sequence=1), timeout=2
    )
    out = []
    with pytest.raises(grpc.RpcError):  # the deadline ends the subscription
        for e in events:
            kind = str(e.event.WhichOneof("kind"))
            injected = kind == "fund_flow" and e.event.fund_flow.kind == "injection"
            if injected or kind in _OPERATOR_EVENTS:
                out.append((kind, e.event.timestamp_ms))
    return out


def _ledger_stamps(d: Daemon) -> list[int]:
    ledger = query(d).ListFundLedger(query_pb2.ListFundLedgerRequest(asset="USDT")).entries
    return [e.timestamp_ms for e in ledger if e.kind == "injection"]


def test_operator_changes_are_stamped_with_riskds_clock_and_replay_keeps_the_stamps(
    tmp_path: Path,
) -> None:
    d = start_daemon(tmp_path)
    try:
        before_ms = time.time_ns() // 1_000_000
        a = admin(d)
        a.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=1_000 * USDT))
        s = RawStream(d, "gw-stamps")
        assert list(s.send(mark("ETH-USDT", 300_000)).rejections) == []
        s.close()
        a.SetMarketStatus(
            admin_pb2.SetMarketStatusRequest(
                market="ETH-USDT", status=types_pb2.MARKET_STATUS_CLOSE_ONLY
            )
        )
        a.OverrideMarkGuard(admin_pb2.OverrideMarkGuardRequest(market="ETH-USDT", hold=True))
        a.SettleMarket(admin_pb2.SettleMarketRequest(market="ETH-USDT", price=300_000))
        after_ms = time.time_ns() // 1_000_000
        stamps = _stamps(d)
        assert [k for k, _ in stamps] == [
            "fund_flow",
            "market_status_changed",
            "mark_guard_changed",
            "market_status_changed",  # settled
            "market_settled",
        ], stamps
        assert all(before_ms <= ts <= after_ms for _, ts in stamps), (before_ms, stamps)
        assert [ts for _, ts in stamps] == sorted(ts for _, ts in stamps)  # the order taken
        [injected] = _ledger_stamps(d)
        assert injected == stamps[0][1]
        logged = [json.loads(x) for x in d.log.read_text().splitlines() if x.startswith("{")]
        [settled_line] = [x for x in logged if x.get("event") == "market_settled"]
        assert settled_line["ts_ms"] == stamps[-1][1]
        digest = state(d).digest
    finally:
        d.process.send_signal(signal.SIGKILL)  # no snapshot: the journal alone replays
        d.process.wait(10)
    d = start_daemon(tmp_path)
    try:
        assert state(d).digest == digest
        assert _stamps(d) == stamps  # the events numbered again by replay, stamps and all
        assert _ledger_stamps(d) == [injected]
    finally:
        assert d.stop() == 0, d.log.read_text()


ETH = "ETH-USDT"
ETH_TABLE = "[markets.ETH-USDT]"


def _settled_lines(d: Daemon) -> list[dict[str, object]]:
    return [
        json.loads(x) for x in d.log.read_text().splitlines() if '"settled_market_in_config"' in x
    ]


def test_a_settled_market_the_file_still_lists_stays_settled_across_restarts(
    tmp_path: Path,
) -> None:
    """The journal settled ETH-USDT; the file keeps it (even with new settings),
    then drops it, then lists it again: riskd starts each time, the market stays
    settled with its money where settlement put it, and the start says so once."""
    config = tmp_path / "riskd.toml"
    toml = config_mod.default_toml()
    config.write_text(toml)
    d = start_daemon(tmp_path, "--config", str(config))
    try:
        s = RawStream(d, "gw-eth", epoch=1)
        r = s.send(
            deposit(5, 1_000 * USDT),
            deposit(6, 1_000 * USDT),
            margin(5, ETH, 100 * USDT),
            margin(6, ETH, 100 * USDT),
            mark(ETH, 300_000),
            fill(ETH, 1, 5, 6, 300_000, 1_000),  # 5 long 1 ETH at 3,000.00: +100 at 3,100.00
        )
        assert list(r.rejections) == [], r
        s.close()
        admin(d).SettleMarket(admin_pb2.SettleMarketRequest(market=ETH, price=310_000))
        settled = state(d).digest
        assert _settled_lines(d) == []
    finally:
        assert d.stop() == 0, d.log.read_text()

    def restarted(text: str, expect_line: bool) -> None:
        config.write_text(text)
        d = start_daemon(tmp_path, "--config", str(config))
        try:
            assert state(d).digest == settled and ETH not in markets(d)
            lines = _settled_lines(d)
            assert len(lines) == (1 if expect_line else 0), d.log.read_text()
            if expect_line:
                assert lines[0]["markets"] == [ETH] and lines[0]["level"] == "warning"
            got = query(d).GetAccount(query_pb2.GetAccountRequest(account=5, asset="USDT"))
            assert (got.wallet_balance, list(got.positions)) == (1_100 * USDT, [])
            s = RawStream(d, f"gw-eth-{time.monotonic_ns()}")
            [refused] = s.send(mark(ETH, 300_000)).rejections
            assert (refused.code, refused.field) == (PRECONDITION, "updates[0].mark_price.market")
            s.close()
        finally:
            d.process.send_signal(signal.SIGKILL)  # the next start replays the journal tail
            d.process.wait(10)

    # The file still lists it, with a setting changed since: not applied, no refusal.
    edited = toml.replace(ETH_TABLE, ETH_TABLE + "\nfund_fee_share_ppm = 1000", 1)
    restarted(edited, expect_line=True)
    restarted(edited, expect_line=True)  # said again at every start that finds it
    # The file drops it; replayed from the journal alone (no snapshot) it is rebuilt.
    for snap in (tmp_path / "data").glob("snapshot-*"):
        snap.unlink()
    start, _, rest = toml.partition(ETH_TABLE)
    dropped = start + rest[rest.index("[markets.BTC-USD]") :]
    restarted(dropped, expect_line=False)
    # Listed again: still settled, never opened anew with the file's settings.
    restarted(toml, expect_line=True)
