"""Issue 11 (items 1, 4, 8) and issue 13 item 6, through the real daemon.

* A withdrawal retried after a flood of refused ones is not paid twice; one
  older than the remembered window is refused, never paid again; both survive
  a restart.
* A gateway that loses its stream before reading an ack learns the rejections
  in the next stream's first response, also after a restart.
* Truthful messages: the real balance on a refused withdrawal, "wallet
  balance" on a margin transfer larger than the wallet, RESOURCE_EXHAUSTED for
  every stream over ``max_ingest_streams``.
* Withdrawals of an asset pause while a book-mode liquidation is unsettled and
  resume by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from riskd.config import default_toml, parse
from riskd.core import Engine
from riskd.core.events import (
    Deposit,
    Fill,
    FundInjection,
    Input,
    LiquidationDone,
    MarginTransfer,
    MarkPrice,
    Withdrawal,
)
from riskd.core.invariants import digest
from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    withdrawal_pb2,
    withdrawal_pb2_grpc,
)
from riskd_client.gateway import Gateway

from .conftest import Daemon, start_daemon
from .scenario import run_engine, send, stamp

USDT = 10**6
M = "BTC-USDT"


def write_config(tmp: Path, text: str) -> str:
    path = tmp / f"riskd-{time.monotonic_ns()}.toml"
    path.write_text(text)
    parse(text)  # a typo here would only show as a daemon that does not start
    return str(path)


@contextlib.contextmanager
def daemon_with(tmp: Path, config: str) -> Iterator[Daemon]:
    d = start_daemon(tmp, "--config", config)
    try:
        yield d
    finally:
        assert d.stop() == 0, d.log.read_text()


def withdraw(d: Daemon, account: int, amount: int, id_: int) -> withdrawal_pb2.WithdrawResponse:
    stub = withdrawal_pb2_grpc.WithdrawalServiceStub(d.channel())
    return stub.Withdraw(
        withdrawal_pb2.WithdrawRequest(
            account=account, asset="USDT", amount=amount, withdrawal_id=id_
        )
    )


def refused(d: Daemon, account: int, amount: int, id_: int) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        withdraw(d, account, amount, id_)
    return info.value


def wallet(d: Daemon, account: int) -> int:
    q = query_pb2_grpc.QueryServiceStub(d.channel())
    r = q.GetAccount(query_pb2.GetAccountRequest(account=account, asset="USDT"))
    return int(r.wallet_balance)


async def stream(d: Daemon, gateway: str, inputs: list[Input]) -> Gateway:
    async with Gateway(d.target, gateway, batch_size=64) as gw:
        for x in inputs:
            send(gw, x)
    return gw


# --- 1. withdrawal ids ---------------------------------------------------------------


def test_a_retried_withdrawal_is_never_paid_twice(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        default_toml().replace("[server]\n", "[server]\nwithdrawal_ids_remembered = 5\n", 1),
    )
    with daemon_with(tmp_path, config) as d:
        asyncio.run(stream(d, "gw-w", [Deposit(1, "USDT", 10 * USDT, stamp())]))
        first = withdraw(d, 1, USDT, 7)
        assert first.approved and first.wallet_balance == 9 * USDT
        # The attack of issue 11: a flood of refused withdrawals under other ids ...
        for i in range(1_000, 1_060):
            r = withdraw(d, 1, 100 * USDT, i)
            # ... each reporting the real balance (not 0).
            assert not r.approved and r.wallet_balance == 9 * USDT, r
        # ... then the retry: the original decision, nothing paid.
        assert withdraw(d, 1, USDT, 7) == first
        assert wallet(d, 1) == 9 * USDT
        # Five newer approvals push id 7 out of the window: refused, not paid again.
        for i in range(8, 14):
            assert withdraw(d, 1, USDT, i).approved
        assert wallet(d, 1) == 3 * USDT
        e = refused(d, 1, USDT, 7)
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert str(e.details()).startswith("withdrawal_id:") and "too old" in str(e.details())
        last = withdraw(d, 1, USDT, 13)
        assert last.approved and last.wallet_balance == 3 * USDT
        e = refused(d, 1, 2 * USDT, 13)  # the same id for another request
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "different" in str(e.details())
    with daemon_with(tmp_path, config) as again:  # decisions are durable
        assert withdraw(again, 1, USDT, 13) == last
        assert refused(again, 1, USDT, 7).code() == grpc.StatusCode.FAILED_PRECONDITION
        assert withdraw(again, 1, 100 * USDT, 1_059).wallet_balance == 9 * USDT
        assert wallet(again, 1) == 3 * USDT


# --- 2. rejections across a dropped stream -----------------------------------------------


class Unread:
    """A raw Ingest stream that sends one batch and is dropped without reading its ack."""

    def __init__(self, d: Daemon, gateway: str, updates: list[ingest_pb2.Update]) -> None:
        self.channel = d.channel()
        q: queue.Queue[ingest_pb2.IngestRequest | None] = queue.Queue()

        def requests() -> Iterator[ingest_pb2.IngestRequest]:
            while (item := q.get()) is not None:
                yield item

        stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self.call = stub.Ingest(
            requests(), metadata=(("x-riskd-gateway", gateway), ("x-riskd-epoch", "1"))
        )
        assert next(self.call).acked_sequence == 0
        q.put(ingest_pb2.IngestRequest(updates=updates))
        self.q = q

    def drop(self) -> None:
        self.call.cancel()
        self.q.put(None)
        self.channel.close()


def first_response(d: Daemon, gateway: str) -> ingest_pb2.IngestResponse:
    channel = d.channel()
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    call = stub.Ingest(iter(()), metadata=(("x-riskd-gateway", gateway), ("x-riskd-epoch", "1")))
    try:
        return next(call)
    finally:
        call.cancel()
        channel.close()


def test_rejections_reach_a_gateway_that_dropped_its_stream_before_the_ack(
    tmp_path: Path,
) -> None:
    U = ingest_pb2.Update
    updates = [
        U(sequence=1, deposit=ingest_pb2.Deposit(account=5, asset="USDT", amount=USDT)),
        U(sequence=2, mark_price=ingest_pb2.MarkPrice(market=M, price=0)),  # refused
        U(sequence=3, deposit=ingest_pb2.Deposit(account=5, asset="USDT", amount=USDT)),
    ]
    config = write_config(tmp_path, default_toml())
    with daemon_with(tmp_path, config) as d:
        s = Unread(d, "gw-drop", updates)
        # Applied (both deposits are in), yet the ack was never read.
        deadline = time.monotonic() + 30
        while wallet(d, 5) != 2 * USDT and time.monotonic() < deadline:
            time.sleep(0.01)
        s.drop()
        first = first_response(d, "gw-drop")
        while first.acked_sequence < 3 and time.monotonic() < deadline:  # durable a bit later
            first = first_response(d, "gw-drop")
        assert first.acked_sequence == 3 and first.rejections_from == 1
        assert [(r.sequence, r.field) for r in first.rejections] == [
            (2, "updates[1].mark_price.price")
        ]
        assert first.rejections[0].code == ingest_pb2.REJECTION_CODE_INVALID_ARGUMENT

        # The Python helper surfaces it: a fresh helper (it read no ack) reconnects.
        async def helper() -> Gateway:
            async with Gateway(d.target, "gw-drop", epoch=1) as gw:
                await gw.wait_connected()
                gw.next_sequence = 4
                gw.deposit(5, "USDT", USDT)  # and carries on from there
            return gw

        gw = asyncio.run(helper())
        assert [(r.sequence, r.field) for r in gw.rejections] == [
            (2, "updates[1].mark_price.price")
        ]
        assert gw.acked_sequence == 4 and gw.unknown_rejections == []
    with daemon_with(tmp_path, config) as again:  # rebuilt from the journal
        first = first_response(again, "gw-drop")
        assert first.acked_sequence == 4 and first.rejections_from == 1
        assert [(r.sequence, r.field) for r in first.rejections] == [
            (2, "updates[1].mark_price.price")
        ]
        # A resend of what was decided repeats its rejection as first decided.
        channel = again.channel()
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        q: queue.Queue[ingest_pb2.IngestRequest | None] = queue.Queue()
        q.put(ingest_pb2.IngestRequest(updates=updates))

        def requests() -> Iterator[ingest_pb2.IngestRequest]:
            while (item := q.get()) is not None:
                yield item

        call = stub.Ingest(
            requests(), metadata=(("x-riskd-gateway", "gw-drop"), ("x-riskd-epoch", "1"))
        )
        next(call)
        ack = next(call)
        q.put(None)
        assert ack.acked_sequence == 4
        assert [(r.sequence, r.field) for r in ack.rejections] == [
            (2, "updates[1].mark_price.price")
        ]
        for _ in call:
            pass
        channel.close()
        assert wallet(again, 5) == 3 * USDT  # nothing applied twice


# --- 3. truthful messages --------------------------------------------------------------


def test_a_margin_transfer_larger_than_the_wallet_says_so(tmp_path: Path) -> None:
    with daemon_with(tmp_path, write_config(tmp_path, default_toml())) as d:

        async def go() -> Gateway:
            async with Gateway(d.target, "gw-mt") as gw:
                gw.deposit(8, "USDT", 900_000)
                gw.margin_transfer(8, M, 100)
                gw.margin_transfer(8, M, 2**63 - 1)  # the whole int64 range
            return gw

        gw = asyncio.run(go())
        (r,) = gw.rejections
        assert r.field == "updates[2].margin_transfer.amount", r
        assert r.code == ingest_pb2.REJECTION_CODE_FAILED_PRECONDITION
        assert "wallet balance 899900" in r.message and "overflow" not in r.message


def test_every_stream_over_the_limit_gets_resource_exhausted(tmp_path: Path) -> None:
    """Before the fix about one in twenty got CANCELLED or INTERNAL: grpc reported
    the client's own write, racing the refusal, instead of riskd's status."""
    text = default_toml().replace("max_ingest_streams = 32", "max_ingest_streams = 1")
    with daemon_with(tmp_path, write_config(tmp_path, text)) as d:

        async def go() -> Counter[str]:
            async with grpc.aio.insecure_channel(d.target) as channel:
                stub = ingest_pb2_grpc.IngestServiceStub(channel)
                stop = asyncio.Event()

                async def idle() -> AsyncIterator[ingest_pb2.IngestRequest]:
                    await stop.wait()
                    return
                    yield

                hold = stub.Ingest(idle(), metadata=(("x-riskd-gateway", "hold"),))
                await hold.read()
                codes: Counter[str] = Counter()
                for i in range(60):

                    async def eager() -> AsyncIterator[ingest_pb2.IngestRequest]:
                        # Written at once, as an attacker's client does.
                        yield ingest_pb2.IngestRequest(
                            updates=[
                                ingest_pb2.Update(
                                    sequence=1,
                                    mark_price=ingest_pb2.MarkPrice(market=M, price=5_000_000),
                                )
                            ]
                        )
                        await stop.wait()

                    call = stub.Ingest(eager(), metadata=(("x-riskd-gateway", f"g{i}"),))
                    try:
                        async for _ in call:
                            pass
                        codes["OK"] += 1
                    except grpc.aio.AioRpcError as e:
                        codes[e.code().name] += 1
                stop.set()
                hold.cancel()
                return codes

        assert asyncio.run(go()) == Counter({"RESOURCE_EXHAUSTED": 60})


# --- 4. withdrawals pause on bad debt --------------------------------------------------


def test_withdrawals_pause_while_a_bankrupt_liquidation_is_unsettled(tmp_path: Path) -> None:
    text = default_toml().replace(
        '[markets.BTC-USDT]\ncontract_type = "linear"\nasset = "USDT"\nprice_decimals = 2\n'
        "tick_size = 10                 # 0.10 USDT\nquantity_decimals = 3\n"
        'step_size = 1                  # 0.001 BTC\nliquidation_mode = "takeover"',
        '[markets.BTC-USDT]\ncontract_type = "linear"\nasset = "USDT"\nprice_decimals = 2\n'
        'tick_size = 10\nquantity_decimals = 3\nstep_size = 1\nliquidation_mode = "book"',
    )
    config = parse(text)
    assert next(m for m in config.markets if m.symbol == M).liquidation_mode.value == "book"
    t = stamp()
    setup: list[Input] = [
        Deposit(1, "USDT", 10_000 * USDT, t),
        Deposit(2, "USDT", 10_000 * USDT, t),
        MarginTransfer(1, M, 500 * USDT, t),
        MarginTransfer(2, M, 5_000 * USDT, t),
        MarkPrice(M, 5_000_000, t),
        Fill(M, 1, 1, 2, 5_000_000, 100, 0, 0, t),  # 0.1 BTC at 50,000
    ]
    crash = MarkPrice(M, 4_515_000, t + 1000)  # account 1 crosses its liquidation price
    engine = run_engine(setup, Engine(config.markets))
    engine.apply(FundInjection("USDT", 100_000 * USDT, "seed"))
    engine.apply(Withdrawal(2, "USDT", USDT))
    engine.apply(crash)
    (lid,) = engine.markets[M].liquidations  # what the daemon will call it too
    done = LiquidationDone(M, lid, t + 2000)
    with daemon_with(tmp_path, write_config(tmp_path, text)) as d:
        asyncio.run(stream(d, "gw-book", setup))
        admin = admin_pb2_grpc.AdminServiceStub(d.channel())
        admin.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=100_000 * USDT))
        assert withdraw(d, 2, USDT, 1).approved
        gw = asyncio.run(stream(d, "gw-book2", [crash]))
        assert gw.rejections == []
        e = refused(d, 2, USDT, 2)
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        assert str(e.details()).startswith("asset:"), e.details()
        assert f"{M} liquidation {lid}" in str(e.details()) and "resume" in str(e.details())
        assert wallet(d, 2) == 9_999 * USDT - 5_000 * USDT
        # The book gives up; the rest goes to ADL and the liquidation settles.
        asyncio.run(stream(d, "gw-book3", [done]))
        engine.apply(done)
        # The same id goes through now: nothing was remembered for it.
        ok = withdraw(d, 2, USDT, 2)
        assert ok.approved, ok
        engine.apply(Withdrawal(2, "USDT", USDT))
        state = admin.CheckState(admin_pb2.CheckStateRequest())
        assert list(state.violations) == []
        assert state.digest == digest(engine)
