"""No account id in a metrics scrape or in the daemon's INFO logs.

Project rule: metrics are labelled by market, asset, kind and outcome only, and
money decisions are logged at INFO without account ids (accounts only at
DEBUG).  This drives every path that carries an account — deposits, margin
transfers both ways, fills (both sides), funding, a takeover liquidation with
a surplus, a bankrupt one the fund cannot cover (ADL), a book-mode
liquidation with a book fill and ADL of the rest, per-update rejections whose
messages name the account, withdrawals (approved, refused, invalid), queries
and the event stream — with account ids that cannot occur by chance, then
scans a real ``/metrics`` scrape and every line the daemon wrote to its log.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import grpc
import pytest

from riskd.config import default_toml
from riskd.core.events import (
    Deposit,
    Fill,
    FundingRate,
    Input,
    LiquidationDone,
    LiquidationFill,
    MarginTransfer,
    MarkPrice,
)
from riskd.v1 import query_pb2, query_pb2_grpc, withdrawal_pb2, withdrawal_pb2_grpc
from riskd_client.gateway import Gateway

from .conftest import Daemon, start_daemon
from .scenario import USDT, send
from .test_daemon_e2e import events, metric, scrape

# Distinctive account ids: none of these digit strings can appear by chance.
LONG_SURPLUS = 7_310_993_481  # BTC-USDT long, liquidated with a surplus
SHORT_A = 5_020_118_877  # its counterparty, deleveraged
LONG_BANKRUPT = 18_446_744_073_709_551_557  # near the top of uint64: bankrupt long
SHORT_B = 14_757_395_258_967_641_293  # above int64: deleveraged short
BOOK_LONG = 6_151_733_290_407  # ETH-USDT (book mode) long, liquidated
BOOK_BUYER = 8_836_104_512_771  # fills the liquidation order on the book
BOOK_SHORT = 4_402_967_158_303  # ETH-USDT short, deleveraged for the rest
WITHDRAWER = 3_779_215_640_009  # margin in and out, withdrawals
STRANGER = 2_918_406_337_151  # never deposits: refused and queried unknown
ACCOUNTS = (
    LONG_SURPLUS,
    SHORT_A,
    LONG_BANKRUPT,
    SHORT_B,
    BOOK_LONG,
    BOOK_BUYER,
    BOOK_SHORT,
    WITHDRAWER,
    STRANGER,
)

BTC = "BTC-USDT"  # takeover mode (default config)
ETH = "ETH-USDT"  # book mode (changed below)


def _config(tmp: Path) -> Path:
    """The default configuration with ETH-USDT in book mode."""
    text = default_toml()
    start = text.index("[markets.ETH-USDT]")
    mode = text.index('liquidation_mode = "takeover"', start)
    assert "[markets." not in text[start + 1 : mode], "ETH-USDT has no liquidation_mode line"
    text = (
        text[:mode]
        + 'liquidation_mode = "book"'
        + text[mode + len('liquidation_mode = "takeover"') :]
    )
    path = tmp / "riskd.toml"
    path.write_text(text)
    return path


def _scenario() -> list[tuple[Input, str | None]]:
    """Inputs, each with the rejected field expected (None: applied)."""
    u = USDT
    t = int(time.time() * 1000)  # stamped now: riskd may refuse stale updates
    return [
        *((Deposit(a, "USDT", 10_000 * u, t), None) for a in ACCOUNTS if a != STRANGER),
        # BTC-USDT (takeover): one long liquidated with a surplus, one bankrupt
        # in a crash the fund cannot cover, so both shorts are deleveraged.
        (MarginTransfer(LONG_SURPLUS, BTC, 500 * u, t), None),
        (MarginTransfer(SHORT_A, BTC, 5_000 * u, t), None),
        (MarginTransfer(LONG_BANKRUPT, BTC, 600 * u, t), None),
        (MarginTransfer(SHORT_B, BTC, 5_000 * u, t), None),
        (MarkPrice(BTC, 5_000_000, t), None),
        (Fill(BTC, 1, LONG_SURPLUS, SHORT_A, 5_000_000, 100, u, u, t), None),
        (Fill(BTC, 2, LONG_BANKRUPT, SHORT_B, 5_000_000, 100, u, u, t), None),
        (FundingRate(BTC, 10_000, t + 500), None),
        (MarkPrice(BTC, 4_515_000, t + 1000), None),
        (MarkPrice(BTC, 3_500_000, t + 2000), None),
        # ETH-USDT (book): a long's liquidation order, partly filled on the book
        # (the liquidated account cannot trade meanwhile), the rest to ADL.
        (MarginTransfer(BOOK_LONG, ETH, 300 * u, t), None),
        (MarginTransfer(BOOK_SHORT, ETH, 5_000 * u, t), None),
        (MarginTransfer(BOOK_BUYER, ETH, 5_000 * u, t), None),
        (MarkPrice(ETH, 300_000, t), None),
        (Fill(ETH, 3, BOOK_LONG, BOOK_SHORT, 300_000, 1000, 0, 0, t), None),
        (MarkPrice(ETH, 273_000, t + 3000), None),  # margin call
        (MarkPrice(ETH, 270_000, t + 4000), None),  # liquidation order
        (Fill(ETH, 4, BOOK_LONG, BOOK_BUYER, 270_000, 100, 0, 0, t + 4100), "fill.buyer_account"),
        (LiquidationFill(ETH, 1, BOOK_BUYER, 270_000, 400, 0, t + 4200), None),
        (LiquidationDone(ETH, 1, t + 4300), None),
        # Margin in and back out; refusals whose messages name the account.
        (MarginTransfer(WITHDRAWER, ETH, 100 * u, t + 5000), None),
        (MarginTransfer(WITHDRAWER, ETH, -40 * u, t + 5000), None),
        (MarginTransfer(WITHDRAWER, BTC, -5 * u, t + 5000), "margin_transfer.account"),
        (MarginTransfer(STRANGER, BTC, 5 * u, t + 5000), "margin_transfer.amount"),
    ]


async def _ingest(d: Daemon, inputs: list[Input]) -> Gateway:
    async with Gateway(d.target, "gw-privacy", batch_size=5) as gw:
        for x in inputs:
            send(gw, x)
        await gw.flush()
    return gw


async def _gap(d: Daemon) -> None:
    """A batch after a sequence gap is refused whole (a WARNING line), accounts unread."""
    gw = Gateway(d.target, "gw-privacy-gap")
    await gw.start()
    try:
        gw.next_sequence = 7
        gw.fill(BTC, STRANGER, WITHDRAWER, 3_500_000, 1)
        with pytest.raises(Exception, match="expected 1"):
            await gw.flush(timeout=5)
    finally:
        await gw.close()


def _withdrawals(d: Daemon) -> None:
    w = withdrawal_pb2_grpc.WithdrawalServiceStub(d.channel())

    def withdraw(account: int, amount: int, wid: int) -> withdrawal_pb2.WithdrawResponse:
        return w.Withdraw(
            withdrawal_pb2.WithdrawRequest(
                account=account, asset="USDT", amount=amount, withdrawal_id=wid
            )
        )

    ok = withdraw(WITHDRAWER, 1_000 * USDT, 1)
    assert ok.approved, ok
    assert withdraw(WITHDRAWER, 1_000 * USDT, 1) == ok  # idempotent retry
    for account, wid in ((WITHDRAWER, 2), (STRANGER, 3)):
        refused = withdraw(account, 50_000 * USDT, wid)
        assert not refused.approved and str(account) in refused.reason, refused
    with pytest.raises(grpc.RpcError) as e:
        withdraw(WITHDRAWER, -1, 4)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        withdraw(WITHDRAWER, 1, 1)  # same id, different request
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _queries(d: Daemon) -> None:
    q = query_pb2_grpc.QueryServiceStub(d.channel())
    for a in ACCOUNTS:
        for asset in ("USDT", "BTC"):
            q.GetAccount(query_pb2.GetAccountRequest(account=a, asset=asset))
        for market in (BTC, ETH, "BTC-USD"):
            q.GetPosition(query_pb2.GetPositionRequest(account=a, market=market))
    held = q.GetAccount(query_pb2.GetAccountRequest(account=BOOK_SHORT, asset="USDT"))
    assert [p.account for p in held.positions] == [BOOK_SHORT]
    with pytest.raises(grpc.RpcError):
        q.GetPosition(query_pb2.GetPositionRequest(account=STRANGER, market="NOPE"))


def _leaks(text: str) -> list[str]:
    """Each account id found in ``text``, in any usual decimal spelling."""
    found = []
    for a in ACCOUNTS:
        for spelling in (str(a), f"{a:,}", f"{a:_}"):
            if spelling in text:
                found.append(spelling)
    return found


def test_no_account_id_in_metrics_or_info_logs(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--config", str(_config(tmp_path)))
    try:
        scenario = _scenario()
        gw = asyncio.run(_ingest(d, [x for x, _ in scenario]))
        assert gw.acked_sequence == len(scenario)
        expected = {seq: f for seq, (_, f) in enumerate(scenario, 1) if f is not None}
        got = {r.sequence: r.field.split(".", 1)[1] for r in gw.rejections}
        assert got == expected, gw.rejections
        # The refusals name accounts: the ids did reach the daemon's error paths.
        assert all(any(_leaks(r.message)) for r in gw.rejections), gw.rejections
        asyncio.run(_gap(d))
        _withdrawals(d)
        _queries(d)
        evs = events(d)
        text = scrape(d)
    finally:
        code = d.stop()
    assert code == 0, d.log.read_text()

    # The scans (first, so that a leak is what a failure reports).
    lines = d.log.read_text().splitlines()
    assert _leaks(text) == [], "account id in the metrics scrape"
    label_names = {
        name
        for line in text.splitlines()
        if "{" in line and not line.startswith("#")
        for name in re.findall(r'[{,](\w+)="', line[line.index("{") : line.rindex("}") + 1])
    }
    assert label_names, "no labels parsed from the scrape"
    assert not {n for n in label_names if re.search(r"account|acct|user", n, re.I)}, label_names
    leaked = [line for line in lines if _leaks(line)]
    assert leaked == [], "account id in the logs (INFO and above):\n" + "\n".join(leaked)

    # The scenario really happened (so an empty scan proves something).
    assert metric(text, "riskd_liquidations_total", market=BTC, outcome="surplus") >= 1
    assert metric(text, "riskd_liquidations_total", market=BTC, outcome="adl") >= 1
    assert metric(text, "riskd_liquidations_total", market=ETH, outcome="adl") >= 1
    for market in (BTC, ETH):  # one series per ADL reason
        adl = sum(
            metric(text, "riskd_adl_events_total", market=market, reason=reason)
            for reason in ("fund_empty", "market_cap", "drawdown_limit", "no_book", "backstop")
        )
        assert adl >= 1, market
    assert (
        metric(
            text, "riskd_insurance_fund_inflow_quantums_total", asset="USDT", kind="liquidation_fee"
        )
        > 0
    )
    assert metric(text, "riskd_updates_total", kind="Fill", outcome="rejected") >= 1
    kinds = {e.WhichOneof("kind") for e in evs}
    assert {
        "liquidation_order",
        "liquidation_settled",
        "fund_flow",
        "adl_notice",
        "margin_call",
    } <= kinds
    published = " ".join(str(e) for e in evs)
    for a in (LONG_SURPLUS, SHORT_A, LONG_BANKRUPT, SHORT_B, BOOK_LONG, BOOK_SHORT):
        assert str(a) in published  # the event stream does carry accounts: by design
    records = [json.loads(line) for line in lines if line.startswith("{")]
    names = {r.get("event") for r in records}
    assert {
        "liquidation_settled",
        "adl_executed",
        "fund_flow",
        "ingest_sequence_refused",
        "riskd_stopped",
    } <= names, names
    assert {r["level"] for r in records} <= {"info", "warning", "error"}  # INFO, the default
