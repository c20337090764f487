"""Event numbers survive kill -9: a subscriber at N resumes from N+1 after a
restart and receives, one for one, the events of a run that never crashed.

Real daemons on loopback (tests/api/conftest.py), real data directories; the
workload's fills pay fees into the USDT fund from two markets, so fund flows
(published by the fund actor) interleave with the markets' own events.
``RISKD_EVENT_CRASH_CYCLES=N`` runs N kill -9 cycles (default 3).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import threading
from pathlib import Path

import grpc
import pytest

from riskd.config import default_toml
from riskd.core.events import Deposit, Fill, Input, MarginTransfer, MarkPrice
from riskd.v1 import admin_pb2, admin_pb2_grpc, events_pb2, events_pb2_grpc
from riskd_client.gateway import Gateway

from .conftest import start_daemon
from .scenario import send, stamp
from .test_idempotency import USDT, daemon_with, write_config

CYCLES = int(os.environ.get("RISKD_EVENT_CRASH_CYCLES", "3"))
MARKETS = ("BTC-USDT", "ETH-USDT")
PRICE = {"BTC-USDT": 5_000_000, "ETH-USDT": 300_000}


def _config() -> str:
    text = re.sub(r"(?m)^fund_fee_share_ppm = 0$", "fund_fee_share_ppm = 500000", default_toml())
    eth = "[markets.ETH-USDT]\n"
    if "fund_fee_share_ppm" not in text.split(eth)[1].split("[markets.")[0]:
        text = text.replace(eth, eth + "fund_fee_share_ppm = 500000\n")
    return text


def _workload(fills: int) -> list[Input]:
    t = stamp()
    out: list[Input] = []
    for a in range(1, 9):
        out.append(Deposit(a, "USDT", 1_000_000 * USDT, t))
        for m in MARKETS:
            out.append(MarginTransfer(a, m, 100_000 * USDT, t))
    # Accounts 9 (long, 10x) and 10 (short) in each market: the mark swinging
    # down 8 % takes 9 within the margin-call distance of its liquidation price
    # (a margin_call event, published by the market) and back out again.
    for a in (9, 10):
        out.append(Deposit(a, "USDT", 1_000_000 * USDT, t))
    out += [MarkPrice(m, PRICE[m], t) for m in MARKETS]
    for m in MARKETS:
        notional = PRICE[m] * 1000 // 100 * USDT // 1000  # 1000 steps, in USDT units
        out.append(MarginTransfer(9, m, notional // 10, t))
        out.append(MarginTransfer(10, m, notional, t))
        out.append(Fill(m, 10**6, 9, 10, PRICE[m], 1000, 0, 0, t))
    for i in range(fills):
        m = MARKETS[i % 2]
        mark = PRICE[m] if i // 8 % 2 == 0 else PRICE[m] * 92 // 100
        if i % 8 < 2:
            out.append(MarkPrice(m, mark, t + i))
        buyer, seller = 1 + i % 8, 1 + (i + 3) % 8
        # Each side's fee is a fund credit: a fund_flow event each, published
        # by the fund actor while the markets go on.
        out.append(Fill(m, i + 1, buyer, seller, mark, 1, 1_000 + i, 2_000 + i, t + i))
    return out


async def _send(target: str, inputs: list[Input]) -> Gateway:
    async with Gateway(target, "gw-crash", batch_size=16, max_reconnect_delay=0.2) as gw:
        for x in inputs:
            send(gw, x)
            if gw.next_sequence % 16 == 0:
                await gw.flush()  # keep the load going while the daemon is killed
        await gw.flush()
    return gw


def _read(target: str, start: int, upto: int, into: list[events_pb2.Event]) -> None:
    """Follow events from ``start`` until ``upto`` is received or the stream breaks."""
    stub = events_pb2_grpc.EventServiceStub(grpc.insecure_channel(target))
    stream = stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=start), timeout=120)
    try:
        for r in stream:
            into.append(r.event)
            if r.event.sequence >= upto:
                return
    except grpc.RpcError:
        return  # killed: the caller resumes from the last one received
    finally:
        stream.cancel()


def _no_more(target: str, count: int) -> None:
    """The daemon has published exactly ``count`` events."""
    stub = events_pb2_grpc.EventServiceStub(grpc.insecure_channel(target))
    try:
        next(iter(stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=count + 2))))
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.OUT_OF_RANGE, e
        assert f"next is {count + 1}" in str(e.details()), e.details()
    else:
        raise AssertionError(f"more than {count} events")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_subscriber_resumes_across_kill_9_without_gap_or_duplicate(tmp_path: Path) -> None:
    inputs = _workload(150 * CYCLES)
    config = write_config(tmp_path, _config())
    # The run that never crashes.
    (tmp_path / "calm").mkdir()
    with daemon_with(tmp_path / "calm", config) as calm:
        asyncio.run(_send(calm.target, inputs))
        total = _next_is(calm.target) - 1
        expected: list[events_pb2.Event] = []
        _read(calm.target, 1, total, expected)
        _no_more(calm.target, total)
    assert total >= 2 * len(inputs) // 3  # fees: two fund flows per fill
    assert [e.sequence for e in expected] == list(range(1, total + 1))
    assert {e.WhichOneof("kind") for e in expected} >= {"fund_flow"}

    # The same inputs, killed CYCLES times under load.
    port = _free_port()
    listen = ("--config", config, "--grpc-listen", f"127.0.0.1:{port}")
    (tmp_path / "crash").mkdir()
    d = start_daemon(tmp_path / "crash", *listen)
    target = d.target
    sent: list[Gateway] = []
    sender = threading.Thread(target=lambda: sent.append(asyncio.run(_send(target, inputs))))
    sender.start()
    got: list[events_pb2.Event] = []
    try:
        for cycle in range(1, CYCLES + 1):
            _read(target, len(got) + 1, total * cycle // (CYCLES + 1), got)
            d.process.send_signal(signal.SIGKILL)
            d.process.wait()
            d = start_daemon(tmp_path / "crash", *listen)
        _read(target, len(got) + 1, total, got)
        sender.join()
        _no_more(target, total)
    finally:
        code = d.stop()
    assert code == 0, d.log.read_text()
    assert sent and sent[0].rejections == []
    assert [e.sequence for e in got] == list(range(1, total + 1))  # no gap, no duplicate
    assert got == expected
    print(f"{CYCLES} kill -9 cycles, {total} events, {len(inputs)} inputs: none lost or repeated")


def _next_is(target: str) -> int:
    """The next sequence the daemon will publish (from the OUT_OF_RANGE it names)."""
    stub = events_pb2_grpc.EventServiceStub(grpc.insecure_channel(target))
    try:
        next(iter(stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=10**9))))
    except grpc.RpcError as e:
        found = re.search(r"next is (\d+)", str(e.details()))
        assert found is not None, e.details()
        return int(found.group(1))
    raise AssertionError("a subscription from 10**9 was accepted")


def _all(target: str, start: int, upto: int) -> list[events_pb2.Event]:
    got: list[events_pb2.Event] = []
    _read(target, start, upto, got)
    return got


def test_events_are_served_from_disk_after_a_restart_and_numbering_goes_on(
    tmp_path: Path,
) -> None:
    text = re.sub(r"(?m)^event_retention = \d+", "event_retention = 50", _config())
    config = write_config(tmp_path, text)
    with daemon_with(tmp_path, config) as d:
        asyncio.run(_send(d.target, _workload(40)))
        total = _next_is(d.target) - 1
        before = _all(d.target, total - 49, total)
    assert total > 50 and [e.sequence for e in before] == list(range(total - 49, total + 1))
    # A clean stop writes a snapshot that counts them; after the restart memory
    # holds none of them: they are read back from events.sqlite3.
    with daemon_with(tmp_path, config) as d:
        assert _next_is(d.target) == total + 1
        assert _all(d.target, 0, total) == before  # 0: the oldest retained, on disk
        stub = events_pb2_grpc.EventServiceStub(d.channel())
        with pytest.raises(grpc.RpcError) as e:
            next(iter(stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=1))))
        assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert f"before {total - 49} " in str(e.value.details())
        admin = admin_pb2_grpc.AdminServiceStub(d.channel())
        admin.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=1, cause="after"))
        (new,) = _all(d.target, total + 1, total + 1)
        assert (new.sequence, new.fund_flow.cause) == (total + 1, "after")
