"""Events a gateway can rely on: what ``from_sequence`` 0 means, and the open
liquidation orders a gateway that lost its state recovers from QueryService.

Real daemons on loopback (tests/api/conftest.py), real data directories.
"""

from __future__ import annotations

import asyncio
import re
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
)
from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    types_pb2,
)

from .conftest import Daemon
from .scenario import run_engine, stamp
from .test_idempotency import USDT, M, daemon_with, stream, write_config


def _inject(d: Daemon, n: int) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(d.channel())
    for i in range(n):
        admin.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=1, cause=f"c{i}"))


def _first(d: Daemon, start: int) -> events_pb2.Event:
    stub = events_pb2_grpc.EventServiceStub(d.channel())
    stream_ = stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=start), timeout=10)
    try:
        return next(iter(stream_)).event
    finally:
        stream_.cancel()


def test_from_sequence_0_starts_at_the_oldest_retained_event(tmp_path: Path) -> None:
    text = re.sub(r"(?m)^event_retention = \d+", "event_retention = 3", default_toml())
    assert "event_retention = 3" in text
    with daemon_with(tmp_path, write_config(tmp_path, text)) as d:
        _inject(d, 5)  # one fund_flow event each: 1..5, of which 3..5 are retained
        first = _first(d, 0)
        assert (first.sequence, first.fund_flow.cause) == (3, "c2")
        # Naming the oldest is the same as 0.
        assert _first(d, 3) == first
        # Older than retention: OUT_OF_RANGE naming the oldest, as before.
        stub = events_pb2_grpc.EventServiceStub(d.channel())
        with pytest.raises(grpc.RpcError) as e:
            next(iter(stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=1), timeout=10)))
        assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "from_sequence" in str(e.value.details()) and "3" in str(e.value.details())
        # Only new events: name the next sequence (6); the next event is 6, not 3.
        new = stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=6), timeout=10)
        _inject(d, 1)
        try:
            assert next(iter(new)).event.sequence == 6
        finally:
            new.cancel()


BOOK = default_toml().replace(
    '[markets.BTC-USDT]\ncontract_type = "linear"\nasset = "USDT"\nprice_decimals = 2\n'
    "tick_size = 10                 # 0.10 USDT\nquantity_decimals = 3\n"
    'step_size = 1                  # 0.001 BTC\nliquidation_mode = "takeover"',
    '[markets.BTC-USDT]\ncontract_type = "linear"\nasset = "USDT"\nprice_decimals = 2\n'
    'tick_size = 10\nquantity_decimals = 3\nstep_size = 1\nliquidation_mode = "book"',
)


def _orders(d: Daemon, market: str = M) -> list[query_pb2.OpenLiquidationOrder]:
    q = query_pb2_grpc.QueryServiceStub(d.channel())
    request = query_pb2.ListLiquidationOrdersRequest(market=market)
    return list(q.ListLiquidationOrders(request).orders)


def test_open_liquidation_orders_are_listed_and_survive_a_restart(tmp_path: Path) -> None:
    assert default_toml() != BOOK
    t = stamp()
    setup: list[Input] = [
        Deposit(1, "USDT", 10_000 * USDT, t),
        Deposit(2, "USDT", 10_000 * USDT, t),
        MarginTransfer(1, M, 500 * USDT, t),
        MarginTransfer(2, M, 5_000 * USDT, t),
        MarkPrice(M, 5_000_000, t),
        Fill(M, 1, 1, 2, 5_000_000, 100, 0, 0, t),  # 0.1 BTC long for account 1
    ]
    crash = MarkPrice(M, 4_515_000, t + 1000)  # account 1 crosses its liquidation price

    engine = run_engine(setup, Engine(parse(BOOK).markets))
    engine.apply(FundInjection("USDT", 100_000 * USDT, "seed"))
    engine.apply(crash)
    (lid,) = engine.markets[M].liquidations
    config = write_config(tmp_path, BOOK)
    with daemon_with(tmp_path, config) as d:
        q = query_pb2_grpc.QueryServiceStub(d.channel())
        with pytest.raises(grpc.RpcError) as e:
            q.ListLiquidationOrders(query_pb2.ListLiquidationOrdersRequest(market="NOPE"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "market" in str(e.value.details())
        asyncio.run(stream(d, "gw-a", setup))
        admin = admin_pb2_grpc.AdminServiceStub(d.channel())
        admin.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=100_000 * USDT))
        assert _orders(d) == []
        asyncio.run(stream(d, "gw-b", [crash]))
        (listed,) = _orders(d)
        # The same order the event stream published.
        stub = events_pb2_grpc.EventServiceStub(d.channel())
        follow = stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=0), timeout=10)
        try:
            published = next(
                r.event.liquidation_order for r in follow if r.event.HasField("liquidation_order")
            )
        finally:
            follow.cancel()
        assert listed.order == published
        assert listed.order.liquidation_id == lid and listed.order.account == 1
        assert listed.order.side == types_pb2.SIDE_SELL and listed.filled_quantity == 0
    # A gateway that lost its state after a restart still finds it.
    with daemon_with(tmp_path, config) as d:
        (again,) = _orders(d)
        assert again == listed
        asyncio.run(stream(d, "gw-c", [LiquidationDone(M, lid, t + 2000)]))
        assert _orders(d) == []
